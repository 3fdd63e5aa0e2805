#!/usr/bin/env bash
# saescope on one GPU, side by side with the peers, in one run of under 8 minutes (no network needed):
#   kernels   the Triton kernels of the sparse TopK training path against the PyTorch path (fails the run if unequal)
#   generate  steered generation tok/s: saescope vs HF generate + hook vs TransformerLens (GPT-2 small shape)
#   train     TopK training tok/s at d_in 768, d_sae 131,072, k 32, batch 4,096: saescope vs sparsify vs SAELens
#   read      read latency, GPT-2 small + a 131k-latent SAE
#   stats     feature statistics tok/s (batch size from the memory planner)
# with peak GPU memory for each, and the memory planner's estimate beside the measured peaks.
# Weights are random, in GPT-2 small's published shape, built here from seeds.
#
#   bash benchmarks/gpu.sh [--wheels DIR] [--work DIR] [--only PART,...]
#   bash benchmarks/gpu.sh --smoke          tiny sizes on the CPU, every code path, under a minute
#
# Packages: whatever of benchmarks/gpu-requirements.txt is missing is installed from --wheels DIR (pip --no-index).
# Fill DIR on a machine with network, for the GPU machine's Python and platform:
#   pip download -d DIR --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 \
#       -r benchmarks/gpu-requirements.txt
# Environment: PYTHON (default python); SAESCOPE_TRITON=0 runs training on the PyTorch path only.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
smoke=0 wheels="" work="" only=""
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --wheels) wheels=${2:?--wheels needs a directory}; shift ;;
    --work) work=${2:?--work needs a directory}; shift ;;
    --only) only=${2:?--only needs part names}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
start=$SECONDS

# ---- packages --------------------------------------------------------------------------------------------------
missing=$("$PY" - <<'EOF'
import importlib.util
mods = ["torch", "transformers", "tokenizers", "huggingface_hub", "safetensors", "numpy", "tqdm", "rich",
        "matplotlib", "transformer_lens", "sae_lens", "sparsify"]
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  if [ -n "$wheels" ]; then
    echo "installing from $wheels: $missing"
    timeout 60 "$PY" -m pip install -q --no-index --find-links "$wheels" -r "$ROOT/benchmarks/gpu-requirements.txt" \
      || { echo "error: installing from $wheels failed" >&2; exit 2; }
  else
    echo "warning: not installed: $missing (their rows are skipped; pass --wheels DIR, see --help)"
    case " $missing " in *" torch "*|*" transformers "*) echo "error: torch and transformers are required" >&2; exit 2 ;; esac
  fi
fi
if [ "$smoke" = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device visible; on a CPU run: bash benchmarks/gpu.sh --smoke" >&2
  exit 2
fi

# ---- parts, each in its own process under its own time limit -------------------------------------------------------
[ -n "$work" ] || { work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; }
mkdir -p "$work"
flags=() limit_of="prepare:60 kernels:45 generate:80 train:120 read:45 stats:70"   # + install (60): 8 minutes
if [ "$smoke" = 1 ]; then
  flags=(--smoke) limit_of="prepare:60 kernels:60 generate:60 train:60 read:60 stats:60"
  # on the CPU the Triton kernels run under Triton's interpreter (set before Triton is imported)
  "$PY" -c "import triton" 2>/dev/null && export TRITON_INTERPRET=1
fi
parts=${only//,/ }
[ -n "$parts" ] || parts="kernels generate train read stats"
case " $parts " in *" generate "*|*" read "*|*" stats "*) parts="prepare $parts" ;; esac
limits=""
for p in $parts; do
  l=$(echo "$limit_of" | grep -o "\b$p:[0-9]*") || { echo "error: unknown part $p" >&2; exit 2; }
  limits="$limits $l"
done
echo "$parts" > "$work/expected"
# the whole smoke run in one process (the imports once): under a minute on a CPU
[ "$smoke" = 1 ] && [ -z "$only" ] && limits="all:100"
failed=0
for item in $limits; do
  part=${item%%:*} limit=${item##*:}
  echo "== $part (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$PY" "$ROOT/benchmarks/gpu_bench.py" --part "$part" --work "$work" "${flags[@]}"
  rc=$?
  if [ $rc = 124 ] || [ $rc = 137 ]; then echo "   $part: TIMED OUT after ${limit} s"; failed=1
  elif [ $rc != 0 ]; then echo "   $part: FAILED (exit $rc)"; failed=1; fi
done
"$PY" "$ROOT/benchmarks/gpu_bench.py" --part report --work "$work" || failed=1
echo "total $((SECONDS - start)) s"
exit $failed
