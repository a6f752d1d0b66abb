// Builds <folder name>.wasm from plugin.js with componentize-js (see build.sh).
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFileSync } from 'node:fs';
import { basename, resolve } from 'node:path';

const dir = resolve(process.argv[2] ?? '.');
const { component } = await componentize({
  sourcePath: `${dir}/plugin.js`,
  witPath: `${dir}/wit`,
  worldName: 'spam-plugin',
  // Plugins get no network: without these the component would import wasi:http.
  disableFeatures: ['http', 'fetch-event'],
});
const out = `${dir}/${basename(dir)}.wasm`;
writeFileSync(out, component);
console.log(`built ${out}`);
