#!/usr/bin/env bash
# The distillation figures on Fashion-MNIST: a 784-1024-10 teacher (trained
# with shifts, dropout and weight decay), a 784-128-10 student trained alone and distilled with the same
# recipe, the distilled student compressed to int8, and the test accuracy of
# each (evaluated once, on the model each run chose by validation).
#
#   scripts/distill_measure.sh [OUT_DIR] [extra flags for every run, e.g. --device gpu]
#
# STUDENT_EPOCHS (default 60) sets the student's epochs. Targets: distilled
# beats alone by >= 0.5 points, is within 1 point of the teacher, and its
# int8 file is under 150 KB.
set -euo pipefail
out=${1:-distill-measure}
shift || true
extra=("$@")
bin=${WGTRAIN:-target/release/wgtrain}
data=${WGTRAIN_DATA:-/usr/share/datasets/fashion-mnist}
mkdir -p "$out"
recipe=(--optimizer adamw --lr 0.001 --schedule cosine --val-split 0.1)
# The student (alone and distilled) trains longer than the teacher: the
# distilled student still gains after epoch 20, the student alone does not.
student_epochs=${STUDENT_EPOCHS:-60}

acc() { "$bin" eval --model "$1" --data "$data" --json "${extra[@]}" | tr -d "\n" | sed -n 's/.*"accuracy": *\([0-9.e-]*\).*/\1/p'; }

"$bin" train --data "$data" --hidden 1024 "${recipe[@]}" --epochs 40 --batch 128 --warmup-epochs 1 \
    --shift 1 --dropout 0.1 --weight-decay 0.05 --save "$out/teacher.safetensors" "${extra[@]}"
"$bin" train --data "$data" --hidden 128 "${recipe[@]}" --epochs "$student_epochs" --save "$out/alone.safetensors" "${extra[@]}"
rm -f "$out/teacher-probs.bin" # made again from this run's teacher
"$bin" distill --data "$data" --teacher "$out/teacher.safetensors" --temperature 4 --alpha 0.7 \
    --hidden 128 "${recipe[@]}" --epochs "$student_epochs" --teacher-cache "$out/teacher-probs.bin" \
    --save "$out/student.safetensors" "${extra[@]}"
"$bin" compress --model "$out/student.safetensors" --out "$out/student-int8.safetensors" --quantize int8

for m in teacher alone student student-int8; do
    printf '%-13s test accuracy %s  file %s bytes\n' "$m" "$(acc "$out/$m.safetensors")" \
        "$(stat -c %s "$out/$m.safetensors")"
done
