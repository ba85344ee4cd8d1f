// node gltf_validate.js FILE.glb: prints the Khronos glTF validator's report (npm package gltf-validator) as JSON.
const fs = require("fs");
const validator = require("gltf-validator");

validator.validateBytes(new Uint8Array(fs.readFileSync(process.argv[2])), {maxIssues: 1000})
  .then((report) => console.log(JSON.stringify(report)))
  .catch((error) => { console.error(error); process.exit(1); });
