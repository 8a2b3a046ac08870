// Syntax highlighting for the code viewer, with Prism (vendor/prism.js, from the npm
// registry, loaded by index.html as a classic script with data-manual, so it highlights
// nothing by itself). Prism's tokenizer gives tokens, not HTML: each piece goes into the
// page as a text node in a span of its token classes (tok-<type>), never parsed as markup.

const LANGUAGES = {
  py: "python",
  js: "javascript",
  mjs: "javascript",
  cjs: "javascript",
  ts: "typescript",
  jsx: "jsx",
  json: "json",
  toml: "toml",
  yml: "yaml",
  yaml: "yaml",
  md: "markdown",
  html: "markup",
  htm: "markup",
  xml: "markup",
  svg: "markup",
  css: "css",
  sh: "bash",
  bash: "bash",
  sql: "sql",
  go: "go",
  rs: "rust",
};
// Past this a file is shown plain: tokenizing it on every typed delta would lag.
const MAX_CHARS = 200_000;

export function languageOf(path) {
  const name = path.split("/").at(-1).toLowerCase();
  if (name === "dockerfile" || name === "makefile") return null;
  const extension = name.includes(".") ? name.split(".").at(-1) : "";
  return LANGUAGES[extension] ?? null;
}

function grammarOf(path) {
  const prism = window.Prism;
  const language = languageOf(path);
  return prism && language ? prism.languages[language] ?? null : null;
}

// The pieces of each line: [text, className] ("" for plain text), one array per line
// (content.split("\n") lines: a token spanning lines is cut at each newline).
export function highlightedLines(content, path) {
  const grammar = content.length <= MAX_CHARS ? grammarOf(path) : null;
  const pieces = [];
  if (grammar) flatten(window.Prism.tokenize(content, grammar), "", pieces);
  else pieces.push([content, ""]);
  const lines = [[]];
  for (const [text, className] of pieces) {
    const parts = text.split("\n");
    parts.forEach((part, index) => {
      if (index > 0) lines.push([]);
      if (part) lines.at(-1).push([part, className]);
    });
  }
  return lines;
}

function flatten(tokens, classes, into) {
  for (const token of tokens) {
    if (typeof token === "string") {
      into.push([token, classes]);
      continue;
    }
    // Prefixed: Prism's type names (code, tag, title, ...) would meet the page's classes.
    const types = [token.type, ...(token.alias ? [token.alias].flat() : [])].map((type) => `tok-${type}`);
    const names = [classes, "token", ...types].filter(Boolean).join(" ");
    flatten([token.content].flat(), names, into);
  }
}
