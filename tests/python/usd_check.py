"""Checks a USDZ file with Pixar's own code (usd-core) and prints one JSON object:

- "errors": every error of every validator usd-core registers (UsdValidation), among them
  the usdz package rules (stored, 64-byte aligned, allowed file types, first file a layer);
- "faces", "bounds", "up_axis", "meters_per_unit": the stage read back with UsdGeom;
- "entries": the zip layout computed here with zipfile alone (name, compression, data
  offset from the local header), independently of both writers and usd-core.

    usd_check.py FILE.usdz
"""

import json
import struct
import sys
import zipfile

from pxr import Usd, UsdGeom, UsdValidation


def entries(path):
    out = []
    with open(path, "rb") as raw, zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            raw.seek(info.header_offset)
            header = raw.read(30)
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            out.append({
                "name": info.filename,
                "stored": info.compress_type == zipfile.ZIP_STORED,
                "encrypted": bool(info.flag_bits & 0x1),
                "data_offset": info.header_offset + 30 + name_length + extra_length,
            })
    return out


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    path = sys.argv[1]
    stage = Usd.Stage.Open(path)
    registry = UsdValidation.ValidationRegistry()
    names = [v.GetMetadata().name for v in registry.GetOrLoadAllValidators()]
    context = UsdValidation.ValidationContext(registry.GetOrLoadValidatorsByName(names))
    errors = []
    for error in context.Validate(stage):
        validator = error.GetValidator()
        errors.append({
            "type": str(error.GetType()),
            "validator": validator.GetMetadata().name if validator else "",
            "message": error.GetMessage(),
        })
    faces = 0
    for prim in stage.Traverse():
        if prim.IsA(UsdGeom.Mesh):
            faces += len(UsdGeom.Mesh(prim).GetFaceVertexCountsAttr().Get() or [])
    box = UsdGeom.BBoxCache(Usd.TimeCode.Default(), ["default"]).ComputeWorldBound(
        stage.GetPseudoRoot()).ComputeAlignedRange()
    print(json.dumps({
        "validators": len(names),
        "errors": errors,
        "faces": faces,
        "bounds": [list(box.GetMin()), list(box.GetMax())],
        "up_axis": str(UsdGeom.GetStageUpAxis(stage)),
        "meters_per_unit": UsdGeom.GetStageMetersPerUnit(stage),
        "default_prim": str(stage.GetDefaultPrim().GetPath()),
        "entries": entries(path),
    }))


if __name__ == "__main__":
    main()
