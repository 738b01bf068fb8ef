#!/usr/bin/env bash
# Regenerates the pictures in examples/ with the bundled default model: bash examples/make_examples.sh
set -euo pipefail
cd "$(dirname "$0")"
photo=astronaut.png
jmvae img2attr "$photo" --format json > astronaut-attributes.json
jmvae edit "$photo" --set Eyeglasses -o astronaut-eyeglasses.png --force
jmvae edit "$photo" --set Blond_Hair -o astronaut-blond.png --force
jmvae edit "$photo" --unset Smiling -o astronaut-not-smiling.png --force
jmvae edit "$photo" --set Eyeglasses --set Blond_Hair -o astronaut-eyeglasses-blond.png --force
jmvae edit "$photo" --set Eyeglasses --show --size 128 -o strip-eyeglasses.png --force
jmvae edit "$photo" --set Blond_Hair --show --size 128 -o strip-blond.png --force
jmvae edit "$photo" --unset Smiling --show --size 128 -o strip-not-smiling.png --force
jmvae attr2img --base zeros --set Male --set Eyeglasses --samples 7 --size 96 -o male-eyeglasses.png
# attributes -> image: a plain base (no beard, young, all else off), then one attribute on; mean and 3 samples each
base="--base zeros --set No_Beard --set Young --samples 3 --size 64"
jmvae attr2img $base -o attrs-base.png
for a in Male Smiling Eyeglasses Blond_Hair; do jmvae attr2img $base --set "$a" -o "attrs-$a.png"; done
jmvae attr2img --attrs astronaut-attributes.json --set Blond_Hair --samples 3 --size 96 -o astronaut-as-attributes.png
python3 - <<'PY'
from PIL import Image
strips = [Image.open(f"strip-{n}.png") for n in ("eyeglasses", "blond", "not-smiling")]
out = Image.new("RGB", (strips[0].width, sum(s.height for s in strips)), "white")
for i, s in enumerate(strips):
    out.paste(s, (0, i * s.height))
out.save("astronaut-edits.png")
# README's first picture: per edit, the photo's face | before-issue-10/ (the same edit by the code of commit 9699859:
# the paper's rule at +-2, rectangle paste; kept as files since that code is gone) | the edit made now
box = (115, 0, 335, 240)  # the astronaut's head in the 512x512 photo
names = {"eyeglasses": "astronaut-eyeglasses.png", "blond": "astronaut-blond.png", "not-smiling": "astronaut-not-smiling.png"}
w, h = box[2] - box[0], box[3] - box[1]
out = Image.new("RGB", (3 * w, len(names) * h), "white")
for row, (name, now) in enumerate(names.items()):
    for col, im in enumerate((Image.open("astronaut.png").crop(box), Image.open(f"before-issue-10/{name}.png"), Image.open(now).crop(box))):
        out.paste(im, (col * w, row * h))
out.save("before-after.png")
PY
rm strip-*.png
