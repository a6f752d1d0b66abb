// Builds every plugins/javascript/<name>/plugin.js into <out>/<name with - as _>.wasm with the
// pinned componentize-js. Run by build.sh, from the toolchain directory that holds
// node_modules. Each plugin.js names its WIT world on a `// world: NAME` first line.
import { componentize } from '@bytecodealliance/componentize-js';
import { readdirSync, readFileSync, writeFileSync, renameSync, existsSync, statSync } from 'node:fs';
import { join } from 'node:path';

const [source, wit, out] = process.argv.slice(2);
for (const name of readdirSync(source)) {
  const file = join(source, name, 'plugin.js');
  if (!existsSync(file)) continue;
  const text = readFileSync(file, 'utf8');
  const world = /^\/\/ world: *(\S+)/m.exec(text)?.[1];
  if (!world) throw new Error(`${file}: no '// world: NAME' line`);
  const target = join(out, `${name.replaceAll('-', '_')}.wasm`);
  if (existsSync(target) && statSync(target).mtimeMs > statSync(file).mtimeMs) continue;
  const { component } = await componentize({
    sourcePath: file,
    witPath: wit,
    worldName: world,
    // Plugins get no network: without these the component would import wasi:http.
    disableFeatures: ['http', 'fetch-event'],
  });
  writeFileSync(`${target}.tmp`, component);
  renameSync(`${target}.tmp`, target);
  console.log(`built ${target}`);
}
