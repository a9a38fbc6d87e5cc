#!/usr/bin/env node
// Runs the Khronos glTF Validator on each file named on the command line and prints its
// report: a summary line per file, then each issue. With --json the whole report is
// printed instead, as the validator produces it.
//
// Exit code: 0 when no file has an error, 1 when any has one, 2 when a file cannot be
// read or is not glTF at all (the validator refuses to start on it).
//
// Usage: node validate.mjs [--json] FILE.glb [FILE.glb ...]

import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import * as validator from 'gltf-validator';

const SEVERITY = ['error', 'warning', 'info', 'hint'];

const args = process.argv.slice(2);
const json = args.includes('--json');
const files = args.filter((arg) => arg !== '--json');
if (files.length === 0) {
  console.error('usage: node validate.mjs [--json] FILE.glb [FILE.glb ...]');
  process.exit(2);
}

let worst = 0;
for (const file of files) {
  let report;
  try {
    const bytes = await readFile(file);
    report = await validator.validateBytes(new Uint8Array(bytes), {
      uri: basename(file),
      // A GLB from kiln embeds everything; an external reference would be a bug, and the
      // validator reports it as unloadable when it is not given a way to load it.
      maxIssues: 0,
      writeTimestamp: false,
    });
  } catch (error) {
    console.error(`${file}: cannot validate: ${error}`);
    worst = 2;
    continue;
  }
  if (json) {
    console.log(JSON.stringify(report, null, 2));
  } else {
    const i = report.issues;
    console.log(
      `${file}: ${i.numErrors} error(s), ${i.numWarnings} warning(s), ${i.numInfos} info(s), ` +
        `${i.numHints} hint(s) (validator ${report.validatorVersion})`,
    );
    for (const message of i.messages) {
      const where = message.pointer ? ` at ${message.pointer}` : '';
      console.log(`  ${SEVERITY[message.severity] ?? message.severity} ${message.code}${where}: ${message.message}`);
    }
  }
  if (report.issues.numErrors > 0 && worst < 1) {
    worst = 1;
  }
}
process.exit(worst);
