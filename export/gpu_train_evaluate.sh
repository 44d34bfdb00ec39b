#!/usr/bin/env bash
# Trains the gpu15 profile on a GPU and evaluates it: `python -m export.train_all --profile gpu15` into a fresh
# model repository, then ParM (export.accuracy_table) and ApproxIFER (export.eval_approxifer, K = 8/10/12 and the
# S = 2, 3 rows, the new deployed models next to the committed fashion_cnn / mnist_cnn on the same trials), and
# leaves the logs, the results and the models under $OUT.
#
# On a GPU machine with a checkout of this repository and the datasets in data/ (export/datasets.py):
#     OUT=/tmp/gpu15-out bash export/gpu_train_evaluate.sh run
# On a machine that receives the working tree with a size limit (64 MiB with the paths sent beside it; see
# export/gpu_data.py), send the datasets in parts, one per command, all on the same machine and back to back:
#   0. here, once:                 bash export/gpu_train_evaluate.sh pack   (writes data/gpu15/part1, part2; ~3 min of xz on 1 core)
#   1. there, with data/gpu15/part1: bash export/gpu_train_evaluate.sh stage  (about 2 minutes)
#   2. there, with data/gpu15/part2: bash export/gpu_train_evaluate.sh run    (give it 560 s)
#      (if `pack` printed more parts: `stage` with each but the last, `run` with the last one)
# A `run` on a machine where the earlier parts are not staged stops within seconds, naming the missing files:
# stage them again, then run.
# What it leaves under $OUT: log.txt, summary.md (every table), results.json (train_all: configs, curves, metrics),
# approxifer.json, models.tar.part-aa.. (cat them | tar x: the new models and their manifest.json).
#
# Settings (environment): PYTHON (default: .venv/bin/python if there is one, else python3), GPU15_PROFILE (gpu15;
# tiny15 = the smoke test: 1,000 images per split, one epoch), GPU15_TRAIN_S (training seconds, default the
# profile's: 400), GPU15_DEADLINE_S (540: the whole run, inside 560 s), GPU15_TRIALS (800 ApproxIFER
# trials per row), GPU15_EVAL_THREADS (onnxruntime threads per evaluation; 2 for the committed pair, 3 for each of
# the 3 new models), GPU15_DEVICE (auto), GPU15_WORK (/tmp/gpu15), OUT (where the results go).
# The CPU smoke test (about 5 minutes on one core):
#   OUT=/tmp/gpu15-out GPU15_PROFILE=tiny15 GPU15_TRIALS=20 GPU15_EVAL_THREADS=1 GPU15_DEADLINE_S=1500 \
#     OMP_NUM_THREADS=1 nice -n 19 bash export/gpu_train_evaluate.sh run
set -uo pipefail
cd "$(dirname "$0")/.."

cmd=${1:-run}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PROFILE=${GPU15_PROFILE:-gpu15}
DEADLINE_S=${GPU15_DEADLINE_S:-540}
TRIALS=${GPU15_TRIALS:-800}
WORK=${GPU15_WORK:-/tmp/gpu15}
OUT=${OUT:-/tmp/gpu15-out}
export PYTHONUNBUFFERED=1
START=$SECONDS
left() { echo $((DEADLINE_S - (SECONDS - START))); }
say() { echo "[$(date -u +%H:%M:%S) +$((SECONDS - START))s] $*"; }

case "$cmd" in
pack)
    exec "$PYTHON" -m export.gpu_data pack
    ;;
stage)
    "$PYTHON" -m export.gpu_data stage
    exit $?
    ;;
run) ;;
*)
    echo "usage: $0 pack|stage|run" >&2
    exit 2
    ;;
esac

mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/log.txt") 2>&1

say "gpu_train_evaluate run: profile $PROFILE, deadline ${DEADLINE_S}s, python $PYTHON, out $OUT, work $WORK"
command -v nvidia-smi >/dev/null && nvidia-smi -L
# A bare GPU machine may have python3 with torch, onnx, onnxruntime, numpy and tqdm, and no venv; check first.
if ! "$PYTHON" - <<'EOF'; then
import lzma, numpy, onnx, onnxruntime, torch, tqdm
print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__, "cpus",
      __import__("os").cpu_count())
EOF
    say "FAILED: a Python package is missing (above)"
    exit 2
fi

"$PYTHON" -m export.gpu_data stage || { say "FAILED: staging the datasets"; exit 3; }
complete=$("$PYTHON" -m export.gpu_data complete)
order=()  # Fashion-MNIST first: most of the rows, and its deployed models feed the evaluations early
for d in fashion mnist; do case ",$complete," in *,$d,*) order+=("$d") ;; esac; done
DATASETS=$(IFS=,; echo "${order[*]}")
if [ -z "$DATASETS" ]; then
    say "FAILED: no dataset is complete (stage the other part(s) first, on the same machine)"
    exit 3
fi
say "datasets: $DATASETS"

REPO=$WORK/repo
rm -rf "$REPO" "$WORK"/approxifer-*.json "$WORK"/approxifer-*.md "$WORK/results.json"
mkdir -p "$REPO"

# ApproxIFER beside the training (CPU, onnxruntime): the committed models now, each new deployed model as soon
# as its export is in place (train_all trains the deployed variants first).
old=() new=()
case ",$DATASETS," in *,fashion,*)
    old+=(fashion_cnn)
    new+=(fashion_cnn_mixup fashion_resnet_mixup fashion_resnet) ;;
esac
case ",$DATASETS," in *,mnist,*) old+=(mnist_cnn) ;; esac
for m in "${old[@]}"; do cp -r "model_repository/$m" "$REPO/"; done
evals=()
evaluate() {  # evaluate NAME THREADS MODEL...
    local name=$1 threads=$2
    shift 2
    OMP_NUM_THREADS=$threads "$PYTHON" -m export.eval_approxifer --models "$@" --model-repository "$REPO" \
        --trials "$TRIALS" --no-byzantine --threads "$threads" --wait "$(($(left) - 90))" \
        --out "$WORK/approxifer-$name" >"$WORK/approxifer-$name.log" 2>&1 &
    evals+=($!)
}
[ ${#old[@]} -gt 0 ] && evaluate committed "${GPU15_EVAL_THREADS:-2}" "${old[@]}"
for m in "${new[@]}"; do evaluate "$m" "${GPU15_EVAL_THREADS:-3}" "$m"; done

# Training: the profile's budget (or GPU15_TRAIN_S), stopped in any case 45 s before the deadline; every finished
# model is in the repository and in results.json already (train_all writes both after each model).
train_args=(--profile "$PROFILE" --datasets "$DATASETS" --device "${GPU15_DEVICE:-auto}" --out "$REPO"
    --results "$WORK/results.json")
[ -n "${GPU15_TRAIN_S:-}" ] && train_args+=(--time-budget-s "$GPU15_TRAIN_S")
say "training: python -m export.train_all ${train_args[*]}"
timeout -s INT "$(($(left) - 45))" "$PYTHON" -m export.train_all "${train_args[@]}"
say "training exited with $?"

# The evaluations: what is still running at 30 s before the deadline is stopped (each writes its files at its end).
while [ "$(left)" -gt 30 ] && [ -n "$(jobs -rp)" ]; do sleep 2; done
for pid in "${evals[@]}"; do kill "$pid" 2>/dev/null && say "stopped evaluation $pid at the deadline"; done
for f in "$WORK"/approxifer-*.log; do echo "== $f"; tail -n 12 "$f"; done

jsons=("$WORK"/approxifer-*.json)
{
    echo "# GPU training and evaluation ($PROFILE), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "## ParM (export.accuracy_table --with-models results.json)"
    echo
    [ -f "$WORK/results.json" ] && "$PYTHON" -m export.accuracy_table --with-models "$WORK/results.json"
    echo
    if [ -e "${jsons[0]}" ]; then
        "$PYTHON" -m export.eval_approxifer --merge "${jsons[@]}" --out "$WORK/approxifer" >/dev/null &&
            cat "$WORK/approxifer.md"
    else
        echo "No ApproxIFER evaluation finished."
    fi
    echo
    echo "Wall time: $((SECONDS - START)) s of the ${DEADLINE_S} s deadline."
} >"$OUT/summary.md"
[ -f "$WORK/results.json" ] && cp "$WORK/results.json" "$OUT/results.json"
[ -f "$WORK/approxifer.json" ] && cp "$WORK/approxifer.json" "$OUT/approxifer.json"

# The new models (not the committed ones copied in), in 15 MB pieces, for a machine that returns files of 16 MB at most.
excludes=()
for m in "${old[@]}"; do excludes+=(--exclude "./$m"); done
tar -C "$REPO" -cf - "${excludes[@]}" . | split -b 15M - "$OUT/models.tar.part-"
say "done: $(ls "$OUT" | tr '\n' ' ')"
