#!/usr/bin/env node
// Loads GLB files with three.js's GLTFLoader and its MeshoptDecoder, exactly as the web
// page does, under Node, and prints one JSON line per file: triangles, the world-space
// box of the decoded vertices, and the images the loader asked to decode.
//
// Usage: node load.mjs WEB_DIR FILE.glb [FILE.glb ...]  (WEB_DIR holds node_modules/three)
//
// GLTFLoader decodes textures through the browser (a Blob URL, fetch and
// createImageBitmap). Node has Blob URLs and fetch; createImageBitmap is replaced by a
// check of the image's magic bytes, which are reported so the caller can compare them
// with the glTF's mimeType.

import { readFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';

const [web, ...files] = process.argv.slice(2);
if (!web || files.length === 0) {
  console.error('usage: node load.mjs WEB_DIR FILE.glb [FILE.glb ...]');
  process.exit(2);
}
const module = (path) => import(pathToFileURL(`${web}/node_modules/three/${path}`).href);
const THREE = await module('build/three.module.js');
const { GLTFLoader } = await module('examples/jsm/loaders/GLTFLoader.js');
const { MeshoptDecoder } = await module('examples/jsm/libs/meshopt_decoder.module.js');

globalThis.self = globalThis;
const images = [];
globalThis.createImageBitmap = async (blob) => {
  const bytes = Buffer.from(await blob.arrayBuffer());
  const png = bytes.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  const jpeg = bytes[0] === 0xff && bytes[1] === 0xd8;
  const webp = bytes.subarray(0, 4).toString() === 'RIFF' && bytes.subarray(8, 12).toString() === 'WEBP';
  images.push({ declared: blob.type, found: png ? 'image/png' : jpeg ? 'image/jpeg' : webp ? 'image/webp' : 'unknown' });
  return { width: 1, height: 1, close() {} };
};

let failed = false;
for (const file of files) {
  try {
    const bytes = await readFile(file);
    const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    const gltf = await new GLTFLoader().setMeshoptDecoder(MeshoptDecoder).parseAsync(buffer, '');
    gltf.scene.updateMatrixWorld(true);
    let triangles = 0;
    const box = new THREE.Box3();
    gltf.scene.traverse((object) => {
      if (object.isMesh) {
        const geometry = object.geometry;
        triangles += (geometry.index ? geometry.index.count : geometry.attributes.position.count) / 3;
        box.expandByObject(object, true);
      }
    });
    console.log(JSON.stringify({ file, triangles, min: box.min.toArray(), max: box.max.toArray(), images: images.splice(0) }));
  } catch (error) {
    console.error(`${file}: ${error?.stack ?? error}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
