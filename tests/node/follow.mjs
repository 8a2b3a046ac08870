// Follow a genstream stream with the npm `eventsource` package, as a Node app would.
//
//   node follow.mjs URL TIMEOUT_MS TERMINAL_TYPES TYPE...
//
// Opens `new EventSource(URL)` with no cursor and prints one JSON line per happening:
//   {"kind":"open"}                               each (re)connection
//   {"kind":"event","type":T,"id":I,"data":D}     each event of a listened TYPE
//   {"kind":"error","message":M}                  each error (a drop, a failed reconnect)
//   {"kind":"end","reason":"terminal"|"timeout"}  last, then the process exits
// TERMINAL_TYPES is a comma-separated list: after an event of one of them, it ends.
import { EventSource } from "eventsource";

const [url, timeoutArg, terminalArg, ...types] = process.argv.slice(2);
const terminal = new Set(terminalArg.split(","));

function say(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

const source = new EventSource(url);

function end(reason) {
  source.close();
  say({ kind: "end", reason });
  process.exit(0);
}

const timer = setTimeout(() => end("timeout"), Number(timeoutArg));

source.addEventListener("open", () => say({ kind: "open" }));
source.addEventListener("error", (event) => say({ kind: "error", message: event.message ?? "" }));
for (const type of types) {
  source.addEventListener(type, (event) => {
    say({ kind: "event", type: event.type, id: event.lastEventId, data: event.data });
    if (terminal.has(type)) {
      clearTimeout(timer);
      end("terminal");
    }
  });
}
