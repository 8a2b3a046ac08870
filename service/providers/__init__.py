"""Model providers: each turns a ModelRequest into a stream of text chunks."""
