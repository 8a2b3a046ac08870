// service/protocol.py, the one vocabulary, as the client imports it: written from it by
// `python -m service.web.protocol_js` (do not edit; a test holds it to protocol.py).
export const ACTIVE_STATUSES = Object.freeze(["pending","running"]);
export const ANY_APP_EVENT = "app.*";
export const APP_PREFIX = "app.";
export const STREAM_CURSOR = "stream.cursor";
export const TERMINAL_TYPES = Object.freeze(["generation.cancelled","generation.completed","generation.failed"]);
export const CloseReason = Object.freeze({"CLIENT_GONE":"client_gone","COMPLETED":"completed","SLOW_CLIENT":"slow_client","SEND_TIMEOUT":"send_timeout","SHUTDOWN":"shutdown","ERROR":"error"});
export const EventType = Object.freeze({"MESSAGE_CREATED":"message.created","MESSAGE_DELTA":"message.delta","MESSAGE_UPDATED":"message.updated","GENERATION_STARTED":"generation.started","STAGE":"stage","FILE_STARTED":"file.started","FILE_DELTA":"file.delta","FILE_COMPLETED":"file.completed","VALIDATION":"validation","GENERATION_COMPLETED":"generation.completed","GENERATION_FAILED":"generation.failed","GENERATION_CANCELLED":"generation.cancelled"});
export const GenerationStatus = Object.freeze({"PENDING":"pending","RUNNING":"running","COMPLETED":"completed","FAILED":"failed","CANCELLED":"cancelled"});
