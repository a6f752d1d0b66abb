// Builds <folder name>.wasm from plugin.js with componentize-js (see build.sh).
import { componentize } from '@bytecodealliance/componentize-js';
import { readFileSync, writeFileSync } from 'node:fs';
import { basename, resolve } from 'node:path';

const dir = resolve(process.argv[2] ?? '.');
// The first line of plugin.js names its world: `// world: NAME`.
const world = /^\/\/ world: *(\S+)/.exec(readFileSync(`${dir}/plugin.js`, 'utf8'))?.[1];
if (!world) {
  console.error('plugin.js: first line must be "// world: NAME"');
  process.exit(1);
}
const { component } = await componentize({
  sourcePath: `${dir}/plugin.js`,
  witPath: `${dir}/wit`,
  worldName: world,
  // Plugins get no network: without these the component would import wasi:http.
  disableFeatures: ['http', 'fetch-event'],
});
const out = `${dir}/${basename(dir)}.wasm`;
writeFileSync(out, component);
console.log(`built ${out}`);
