#!/usr/bin/env bash
# Run GPU stages on one H200 (or any CUDA machine) in one go, each under its own time limit, writing
# logs and JSON into $OUT (default bench/results/gpu). Stages run in the order given:
#
#   bench/run_h200.sh attention tests decode rollout learner group
#
#   attention  bench/ksa_attention.py: sweep the Triton tiles/backward at 32K, then 8K/32K/128K vs SDPA
#   tests      pytest -m gpu on the KSA kernels, KSA model/cache and the rollout engine (CUDA graphs)
#   decode     bench/engine_decode.py: generate vs golong's engine, full attention vs KSA, 8K/32K
#   rollout    bench/ksa_rollout.py: KSA vs full at 32K through the engine, equal batch and equal K/V budget
#   learner    bench/learner.py --runs compiled: the learner at the GPU recipe settings, 1.7B/4B, 8K-128K
#   group      bench/learner.py --group 8: one 32K prompt, 8 responses of 2K, prompt shared vs packed 8 times
#   gputest    pytest -m gpu tests/test_train_gpu.py: three trainer steps at the GPU recipe's settings, bounded
#   train      bench/train_gpu.py, 0.6B, 8K prompts, G=8 x 4, 256 new tokens: compiled + shared prompts (the
#              GPU recipe) within 120 s, eager + shared within 90 s, compiled + unshared within 100 s (each
#              process gets 40 s more for imports and shutdown: with 10 s, on 2026-12-05, timeout killed all
#              three before they wrote their summaries; their per-step records were kept)
#   train32k   bench/train_gpu.py, 1.7B, 32K prompts, G=8 x 2, 2K new tokens, compiled + shared, within 190 s
#   ksagroup   bench/learner.py --group 8: the learner alone on one 32K GRPO group (30K prompt + 8 x 2K),
#              1.7B, GPU recipe settings (compiled, save_attention, optimizer-held masters), full then KSA:
#              the KSA learner's speed at 32K without new-bucket compiles in the timed step (~4 min)
#   prefix     pytest -m gpu on the shared-prefix (cascade) decode and the static engine, then bench/prefix_decode.py
#              0.6B, 4 prompts of 8K, G=8, 256 new: decode per step and K/V read with and without share_prefix
#   prefixfuse the same with and without rollout.compile_decode (decode layers through torch.compile), then
#              one profiled call of the shared layout each way: GPU kernel time per decode step vs wall time
#   trl        bench/trainer_vs_trl.py: golong vs TRL's GRPOTrainer, 0.6B shape, 8K prompts, G=8 x 4, 256 new
#   trainksa   bench/train_gpu.py, issue 16's KSA rows (each policy compiled + shared): 0.6B 8K G=8 x 4 256 new
#              KSA (full: the train stage), 0.6B 32K G=8 x 2 2K new full and KSA  (~9 min)
#   trainksa2  1.7B 32K G=8 x 2 2K new KSA (full: train32k), 0.6B 64K G=8 x 1 2K new full and KSA  (~9 min)
#   ksa32k     only the first row of trainksa2 (~4 min)
#   base8k     the train stage's GPU-recipe row alone (120 s), into fused8k's JSON: its baseline on a new card
#   fused8k    the train stage's GPU-recipe row with rollout.compile_decode on (decode layers through torch.compile),
#              full attention (120 s) then KSA (180 s), both sharing prompts
#   ksa8k      fused8k's KSA row without compile_decode (180 s): which decode setting KSA recipes should take
#   prefixfuse2  prefixfuse with one repetition, within 250 s (to follow fused8k in one call)
#   prefixtune the trainer's decode layout (shared, compile_decode, Triton kernel, stacked projections) at 0.6B / 8K,
#              profiled, without then with inductor's GEMM autotuning (TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1): the compiled
#              step's GEMMs are M = 32 rows against weights of 1K-3K columns; in the profile of
#              2026-12-05 they took ~2.4 of the step's 4.2 ms of kernels, the projections 5-19 us each
#              where their 2-6 MB of weights need 0.4-1.3 us at HBM speed (two NN-layout kernels, ~0.75 ms,
#              look like the shared prompts' K/V products, near that floor: read from names, not traced); autotuned Triton GEMMs (split-K among the
#              choices) may use more of the 132 SMs. An experiment: if it wins, the engine sets the
#              flag for its compile.
#   prefix32k  bench/prefix_decode.py 0.6B, 2 prompts of 32K, G=8, 256 new, shared vs per-row prompt K/V,
#              each uncompiled and with compile_decode: full attention, then the 3:1 KSA hybrid
#   fused32k   1.7B 32K G=8 x 2 2K new, full attention, compile_decode and checkpoint_policy save_attention (the
#              learner keeps attention outputs: no O(T^2) recompute), 200 s
#   piecestest the SDPA pieces' GPU test alone (90 s)
#   pieces32k  fused32k with optim.shared_prompt_kernel=sdpa: the shared rows' attention piece by piece through
#              flash SDPA (its outputs kept by save_attention) instead of FlexAttention (recomputed in backward:
#              an inductor kernel the checkpoint policy does not see). Learner time / MFU against fused32k's
#   ksafused32k  the same for the KSA hybrid, 500 s (at 225 s its first step was unfinished on the H100, 2026-12-05;
#              the JSON's stuck_at now says where a step over budget was)
#   groupckpt  the learner alone on one shared 32K group (1.7B, compiled, optimizer-held masters), save_attention
#              against full checkpointing. On CUDA shared rows run FlexAttention compiled between the layers'
#              graphs: its kernel is inductor's, not a dispatcher op, so save_attention's policy (which keeps
#              the outputs of the ops it sees) may not see it and recompute it in backward. Equal times would say
#              so: a candidate for the loop's 30% MFU against 47% on one sequence (hypothesis, not measured)
#   prefixksa  prefix_decode at 0.6B / 8K with compile_decode for the KSA hybrid, profiled: where the KSA decode
#              step's time goes (2.15 s of decode a GRPO step against full attention's 1.34 s, H100)
#   ksarep1    ksarep with seed 1 (models into /tmp/ksa_models_seed1, tars into $OUT/models_seed1)
#   learnerprof  fused32k's row with step 3's learner profiled (--profile-learner 3): where the loop's learner time
#              goes at 30-32% MFU against bench/learner.py's 47% on one sequence (~4 min)
#   ksalearnerprof  learnerprof for the KSA hybrid (~6 min, its first step compiles ~2 min): whether the compiled
#              KSA layers' Triton attention runs once per layer call under save_attention on the GPU (on the CPU,
#              with transformers 5.2x, it does: 2 forward calls for 2 layers, compiled or eager)
#   decodekernel  bench/decode_kernel.py: the split-K Triton decode kernel alone against the torch path, its split
#              size chosen by split_size against a fixed 512 (the KSA parts' shapes: 2 blocks or 16 rows x 8 KV
#              heads, 256-32K keys) (~1 min)
#   splits     bench/decode_kernel.py --splits: the shared-prompt decode part at the trainer's shapes (4 blocks x 8K keys,
#              2 x 32K; 16 stacked queries) at 256-4,096 keys a split, kernel alone and with its merge (eager,
#              compiled): the 0.6B / 32K decode profile of 2026-12-06 spent 0.50 ms a step in the compiled merge of
#              64 splits a layer (18 us a call) against 2.84 ms in the kernel (~1 min)
#   twopart    bench/decode_kernel.py --second-keys: a KSA layer's window text (1,024 keys) and summaries (4,096)
#              in one launch against one launch each, merged (~1 min)
#   verify     the GPU tests of the decode kernel (split sizes), the rollout's Triton decode, save_attention keeping
#              FlexAttention, the compiled decode with its compiled sampler and the engine's look-ahead, without -x (~4 min)
#   ratio32ks  ratio32k within less device time: full 110 s, KSA 210 s (2-5 steady steps each)
#   kernelcheck  the decode kernel's and the KSA attention kernel's GPU tests (~2.5 min): verify's first two files and
#              tests/test_ksa_attention.py
#   mergedsdpa the GPU test of the shared-prompt pieces (cuDNN and flash), then bench/learner.py --group 8 (one 32K group,
#              1.7B, the GPU recipe's learner): FlexAttention kept against optim.shared_prompt_kernel sdpa, now the
#              pieces merged by log-sum-exp (ksa.pieces: prompt, responses over the prompt, each response over
#              itself; cuDNN's fused attention, no K/V copies) (~3 min)
#   sdpa32k    full32kpair's row with optim.shared_prompt_kernel=sdpa: the loop's learner MFU, with a cuDNN plan
#              built for each new piece shape (every step's lengths are new) (~5 min)
#   raggedsdpa with TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 (cuDNN plans per power-of-two length, not per length: a new
#              length cost ~80 ms a piece's forward + backward on 2026-12-06, bench/cudnn_plans.py): the pieces' GPU
#              test (fails on cuDNN's "Falling back" warning) and the engine's chunked-prefill GPU tests (later chunks
#              through flash's causal mask aligned to the last key, no dense mask), the plan costs, then one 32K group's learner with new
#              lengths every step (bench/learner.py --vary): FlexAttention and sdpa with the variable, sdpa without
#              (~6 min)
#   raggedrows 1.7B / 32K with responses that end at their own lengths (bench/train_gpu.py --stop-every 1024: new
#              lengths every step, as a trained policy's), FlexAttention then sdpa with the variable (~10 min)
#   ragged8k   the same at 0.6B / 8K (--stop-every 128, ~5 min)
#   raggedksa  ksa32kpair's row (1.7B / 32K KSA) with the variable: the hybrid's full layers through ksa.pieces in the
#              learner (ksa.shared.WindowPieces) against ksa32kpair's 15.3 s (learner 4.66 s) (~6-9 min)
#   ksatiles   bench/ksa_attention.py --sweep 32768 with the wider tile lists (7 forward, 6 dQ, 7 dK/dV configurations; the
#              kernels' tiles are an H200's best of 2-3), then Triton KSA against SDPA at 4K / 32K / 128K: issue 16's
#              kernel goals (>= 1.0x at 4K, >= 4x at 32K, >= 6x at 128K) on an H100 (~4 min)
#   full32kpair, ksa32kpair  ratio32k's two rows, one call each on one warm machine (full 250 s, KSA 520 s; on
#              2026-12-06 full's first step took 102 s and KSA's did not end in 290 s), into the same JSON
#   ksaspec    the KSA attention GPU test that counts compiled variants over lengths of every 1 / multiple-of-16
#              pattern, then bench/ksa_attention.py at 8K / 32K with the length arguments unspecialised (the code's
#              default) and specialised (KSA_TRITON_SPECIALIZE_LENGTHS=1), 30 reps each (~4 min)
#   noahead8k  pair8k's full-attention row with rollout.look_ahead=false (each decode step read before the next is
#              enqueued): after pair8k on the same machine, what the look-ahead gives a GRPO step (~2.5 min)
#   tune8k     pair8k's full-attention row with inductor's GEMM autotuning (TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1: the learner's
#              and the decode layers' GEMMs alike), to follow pair8k on the same machine (its baseline) (~3 min)
#   sumcols    the 0.6B / 8K KSA row by default, then with rollout.ksa_summaries_every_step (summary columns in every
#              decode step: one step shape, half the decode compiles and graphs), each on empty caches (~8 min);
#              TORCH_LOGS=recompiles: why each graph compiled again (the 1.7B / 32K KSA row counts 49 graphs
#              against full attention's 16). CPU, tiny KSA model (3 ring layers + 1 full), two generates of
#              2 prompts x 8 rows and 1,200 new tokens: the decode layer compiled 11 times and the masks 9,
#              full attention's layer 5. The KSA variants (layer kind x summary columns x which storage exists)
#              each compile static first, then again as a span bucket (the layout's integers, the own-summary
#              storage) or the row count changes, until those sizes are symbolic
#   ratio32k   issue 16's 1.7B / 32K pair at the GPU recipe's settings (Triton decode with split_size, stacked
#              projections, compiled sampler, FlexAttention kept): full (160 s) then KSA (290 s), 8 steps at most
#   flexauto   bench/learner.py --group 8 (one 32K GRPO group, 1.7B, the GPU recipe's learner) with and without
#              optim.flex_autotune: does inductor's tile search speed FlexAttention's backward (3.1 of the
#              learner's 6.6 s at 32K, H100)
#   flexsdpa   the same, flex (kept by kept_through_recompute) against optim.shared_prompt_kernel sdpa
#   triton8k   fused8k's two rows (full, KSA) with rollout.decode_kernel=triton: decode attention as one split-K
#              Triton kernel per key part (ksa/triton_decode.py) instead of matmul / softmax / matmul
#   triton32k  fused32k (full attention, 1.7B 32K) with the Triton decode kernel (245 s)
#   ksatriton32k  ksafused32k with the Triton decode kernel (560 s)
#   gemm       bench/decode_gemm.py: a decode step's weight GEMMs (M = 16-64 rows) at 0.6B / 1.7B, each projection
#              alone vs q/k/v and gate/up fused, in CUDA graphs: whether fused projections move decode toward its floor
#   ksaprof8k  prefix_decode 0.6B / 8K, the KSA hybrid's trainer layout (shared, compile_decode, Triton kernel) alone,
#              profiled; the inductor code of its compiled layers copied into $OUT/inductor_code (the profile of
#              2026-12-05 showed a triton_poi_fused_copy__view kernel 49 times a step, 0.43 ms: what it copies)
#   fusedecode prefix_decode 0.6B / 8K, the trainer's decode layout (shared, compile_decode, Triton kernel), projections
#              separate then stacked (rollout.fuse_projections: q/k/v and gate/up one GEMM each): ms per decode step
#   fuse8k     triton8k's two rows (the GPU recipe: compile_decode, Triton kernel) with rollout.fuse_projections
#   keptgpu    the GPU tests of save_attention keeping the shared-prompt FlexAttention (tests/test_checkpointing.py)
#              and of the compiled decode with its compiled sampler in CUDA graphs (tests/test_rollout_compile.py)
#   pair32k    issue 16's 0.6B / 32K pair at the GPU recipe's settings (compile_decode, Triton kernel, stacked
#              projections, save_attention): full (100 s) then KSA (170 s), G=8 x 2, 2K new
#   pair8k     the same at 8K, G=8 x 4, 256 new: full (110 s) then KSA (300 s); on an empty cache their first steps took
#              44.8 s and 143 s (2026-12-06), and with 70 / 260 s each row stopped after its first step
#   prof32k    bench/prefix_decode.py 0.6B, 2 prompts of 32K, G=8, 256 new, the trainer's decode layout alone (shared
#              prompts, compile_decode, Triton decode kernel), profiled: full attention (ksaprof32k: the KSA hybrid). Where
#              the KSA decode step's time goes at 32K (1.7B: 20.2 s of decode a GRPO step against a floor of 4.8)

# Issue 15 in two device calls (a call runs 600 s at most; each of these ends within ~550 s), each
# with carry [".whl"] after scripts/fetch_gpu_wheels.sh here, timeout_s 600:
#   OUT=$OUT bench/run_h200.sh gputest train        then        OUT=$OUT bench/run_h200.sh train32k trl
#
# Eighth session (2026-12-05, an H100: the H200 would not start; bench/results/h100_2026-12-05d/): base8k fused8k
# (full attention 4.88 -> 3.02 s a step with compile_decode; the KSA row over budget), ksagrpo (lr 3e-4: no
# held-out change for either policy), fused32k (full 27.9 s a step, learner MFU 30%; the KSA row over budget),
# then the KSA row at 8K alone with 290 s: 4.02 s a step (1.33x full's), first step 73 s.
# Ninth session (2026-12-05, an H100, bench/results/h100_2026-12-05e/): fused32k pieces32k (SDPA pieces: learner 5%
# faster), ksafused32k (KSA 31.4 s a step, 1.17x full: decode 1.49x slower, learner 0.66x), prefixksa gputest
# (the KSA decode step bound by its kernels), fused8k (full 2.77 s, KSA 3.49 s).
# Tenth session (2026-12-05, an H100, bench/results/h100_2026-12-05f/): gputest decodekernel triton8k (full 8K 2.77 s a
# step; the KSA 8K row spent its budget on a cold-cache first step), ksatriton32k (KSA 1.7B 32K 26.8 s a step, decode
# 20.2 s: 0.85x / 0.81x the ninth session's torch path). Then the machine was taken back and none came again.
# Eleventh session (2026-12-05, two H100s, bench/results/h100_2026-12-05g/): ksaprof32k prof32k fusedecode (stacked
# projections 0.91x a decode step), triton32k + ksatriton32k (1.7B 32K: full 23.5 s, KSA 18.1 s = 0.77x), learnerprof
# (FlexAttention's forward recomputed: 112 calls), then on a fresh machine keptgpu learnerprof (learner 7.79 -> 6.59 s,
# MFU 36.7%, peak 63.6 GiB; keptgpu failed on its helper's CPU tensor, fixed after).
# Twelfth session (2026-12-05/06): no machine. Every start failed (H100 and H200, 90-180 s of device time
# each, refusals 15 s); the 1,800 s ran out in failed starts. Code changed without GPU measurement: the decode
# kernel's split size per part (split_size) and two key parts per launch (KSA layers 4 launches a step -> 2),
# optim.flex_autotune, bench/learner.py variants (autotune, sdpa).
# Thirteenth session (2026-12-06, an H100, bench/results/h100_2026-12-06/): four starts failed, one machine was taken
# back after ~8 min of `kernelcheck ratio32k` (nothing came back); then kernelcheck (passed: the two-part launch
# compiles and is right on CUDA), the KSA attention GPU tests (passed), decodekernel (split_size's target of 256
# programs lost 0.86-0.89x at 4K keys of 2 rows: now 128, gains 1.13-1.22x at 1K keys) and a two-part probe
# (one launch 1.04-1.16x two, CUDA graphs). Issue 16's 32K pair still not rerun.
# Fourteenth session (2026-12-06, two H100s, bench/results/h100_2026-12-06b/notes.md): ratio32k: full's first step
# 102 s (decode 63.7 s), no steady step in 160 s; KSA's first step unfinished at 290 s. ksagroup: the compiled KSA
# learner failed with CheckpointError (graph breaks inside its checkpointed layers: the within-window prefix order
# built in the layer). Fixed; after it, one 32K group's learner: KSA 2.52 s, full 3.38 s (0.75x).
# Fifteenth session (2026-12-06, one H100, bench/results/h100_2026-12-06c/notes.md): full32kpair ksa32kpair (KSA twice:
# cold cache 286 s first step, then warm) pair8k (twice) verify twopart. 1.7B / 32K: full 22.6 s, KSA 17.7 s = 0.78x
# (decode 0.84x at 2.35x its floor, learner 0.70x); 0.6B / 8K: full 2.63 s, KSA 2.99 s = 1.14x; verify passed; two
# parts in one launch 1.09-1.35x. Then the KSA attention kernel's length arguments unspecialised (one A/B, 5 reps:
# 7-15% slower fwd+bwd, not settled; the compile-count GPU test cut off by its limit): ksaspec re-times it.
# After those runs: the KSA decode step's masks compiled with compile_decode, and rollout.ksa_summaries_every_step
# (off by default).
# Sixteenth session (2026-12-06, one H100 after one failed H200 start, bench/results/h100_2026-12-06d/notes.md): pair8k
# (cold: each row stopped after its first step, budgets now 110 / 300 s; then warm), full32kpair, ksa32kpair, ksaconv8k.
# With the compiled masks and unspecialised kernel lengths: 0.6B / 8K KSA 2.57 s = 0.92x full (2.79 s); 1.7B / 32K
# KSA 16.3 s = 0.74x full (21.9 s), decode 10.3 s at 2.13x its floor, no slow early prefills. Conversion on 8K text:
# 62% of the teacher at 8K (4K text: 69%). New: ksa_grpo.py --tasks, stage ksagrpo32k; train_gpu.py records each
# step's compile work (fx_cache_hit / miss / bypass, aot_cache_*, compile_s).
# Seventeenth session (2026-12-06, H100s, bench/results/h100_2026-12-06e/notes.md): ksarep1 (seed 1: all three models
# learned two-hop, KSA alone counting), ksagrpo32k (kv at 32K from the seed-1 models: held-out kv full 0.66 -> 0.92,
# KSA 0.67 -> 0.89), prefixtune (GEMM autotuning 0.98x: not adopted), ksaprof32k prof32k (0.6B / 32K decode: full
# 5.23 ms a step, KSA 3.57), flexsdpa (SDPA pieces 1.12x slower than kept FlexAttention), pair8k on a fresh machine
# (full 2.48 s, KSA 2.46 s = 0.99x), splits (longer decode splits <= 5%), ksaspec (unspecialised lengths 7-8% slower;
# its compile-count test failed on its own recording wrapper, fixed). Then, unmeasured: the engine looks one step ahead
# (StaticEngine.look_ahead: each decode step enqueued before the last one's tokens are read; ~0.3-0.45 ms of host
# work a step was the device's idle time: a 0.6B / 8K decode step is 3.65 ms by wall clock, ~3.2 ms of kernels).
# Also unmeasured in a step: the decode kernel's splits of up to 2,048 keys (was 512; the splits sweep).
# Eighteenth session (2026-12-06, one H100, bench/results/h100_2026-12-06f/notes.md): verify (the look-ahead's GPU
# test passed) noahead8k pair8k (0.6B / 8K full: look-ahead decode 1.017 -> 0.924 s, 2.24x its floor, step 2.54 s;
# KSA 2.72 s = 1.07x), mergedsdpa (one 32K group's learner: the pieces merged by log-sum-exp on cuDNN 2.82 s
# against FlexAttention's 3.29 s), sdpa32k full32kpair ksa32kpair (1.7B / 32K: full 20.6 s, with sdpa 19.4 s and
# learner MFU 44% (36%), KSA 15.3 s = 0.74x), bench/cudnn_plans.py (cuDNN: ~80 ms a new shape; with
# TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 ~1 ms, but the pieces then fell back on their [B, H, S, D] K / V; since laid
# out [B, S, H, D], untested on the GPU).
# Also built after those runs, not yet on a GPU (issue 16, 32K ratio): a KSA policy's shared rows ran FlexAttention in
# all layers, its 7 full layers too, where the rule is causal attention over text plus each summary's own chunk; with
# TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 those layers now take ksa.pieces (cuDNN) and a per-chunk attention for the
# summaries (ksa.shared.WindowPieces; ~1/4 of the KSA learner's attention FLOPs at ~1.8x the rate: ~0.5 s of a
# 1.7B / 32K step by arithmetic).
# Nineteenth session (2026-12-06, bench/results/h100_2026-12-06g/notes.md; 13 refused calls cost ~1,070 s of device
# time): with TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 the pieces' cuDNN backward gave wrong gradients (GPU test) and an
# illegal memory access (1.7B / 32K step): the merged log-sum-exp went back as [B, H, S], whose strides depend on the
# length, to a plan shared by every length of a bucket. Handed back laid out [B, S, H] as cuDNN's forward allocates
# it: all 5 GPU tests (pieces cuDNN / flash, chunked prefill, KSA window pieces) passed, and a 1.7B / 32K step with
# responses of their own lengths ran end to end (first step, cold: sdpa 60.3 s, flex 66.2 s). Since then golong sets
# the variable at import and the GPU recipes take sdpa; nothing after that ran in steady state.
# Twentieth session (2026-12-06, bench/results/h100_2026-12-06h/notes.md; three calls ran on H100s, three were refused,
# ~480 s): defaults (golong's defaults in steady state: 1.7B / 32K 19.15 s a step, learner MFU 43.2%; 0.6B / 8K died
# at step 12 in the pieces' backward, "cuDNN Frontend error: s_q = s_kv = 1 is not supported": a row's one padding
# token), ksapair32k (full 19.2 s, MFU 42.8%; KSA only its cold first step, 223 s), tinyfix (pieces of <= 16 tokens
# through a small exact path: GPU tests passed, 0.6B / 8K 3.14 s a step over 18 steady steps, learner 1.91 s against
# FlexAttention's 1.26 s the session before; KSA 32K again one cold step, 195 s: train_gpu.py predicted the next step
# from the first, fixed since). Then optim.shared_prompt_kernel "auto" (the GPU recipes'): pieces only where
# responses average >= 1,024 tokens; the same rule gates the KSA window pieces on CUDA. Not run on a GPU yet.
# Next GPU session, in this order (carry [".whl"], one call each; start ~30 s on success, 90-180 s of device time
# lost per failed start: few calls):
#   1. auto8k ksa32kb       (~2 + ~6.5 min, one call) the recipes' "auto" at 0.6B / 8K (FlexAttention at 256 new:
#                           expect ~2.5 s a step), then the KSA 1.7B / 32K row with room for steady steps after
#                           its cold first step (issue 16's ratio against full's 19.15 s)
#   2. raggedpair           (~7.5 min) 1.7B / 32K flex vs sdpa with responses of their own lengths, steady state
#   3. pair32k trainksa2    issue 16's 0.6B / 32K pair and the 64K rows, never run with today's code
#   4. ksatiles             the KSA kernel's tiles and the kernel goals at 4K / 32K / 128K
#   then: sumcols, ksalearnerprof, flexauto, groupckpt, prefix32k
# An idea not built: the pieces' per-response calls as one varlen call each way (aten._cudnn_attention_forward /
# _flash_attention_forward take cum_seq_q / cum_seq_k): 3 calls a layer whatever G, which would make the pieces
# pay at short responses too.
# If only nvidia-h100-x1 can be started (as on 2026-12-05, third session), #17's stages run there as they
# are (accuracy does not depend on the card); #15 / #16's timings need their baseline rerun on the same
# machine (`base8k fused8k` in one call, ~490 s): the README's H200 rows do not compare with
# H100 rows (3.35 vs 4.8 TB/s of HBM: decode is memory-bound).

# Issue 17 (KSA evidence). Ran on an H100, 2026-12-05 (bench/results/h100_2026-12-05c/): ksarep learned kv
# in all three models (1.00 up to 8K) and two-hop in KSA only; ksaconv kept 69% of the teacher at 8K in
# 304 s of distillation; ksagrpo at lr 1e-4 moved no reward, nor at lr 3e-4 with 8 prompts per task
# (eighth session, bench/results/h100_2026-12-05d/grpo/).
#   ksarep   bench/ksa_replication.py: full / 3:1 KSA / SCA from scratch in lockstep, 420 s of training,
#            curriculum 64 -> 8K tokens with tasks entering one at a time, eval 1K-32K; models saved to
#            /tmp/ksa_models and packed as bf16 tars (13 MB each) into $OUT/models. Limit 560 s (it took 493 s
#            on the H100: 1,509 lockstep steps of 0.26-0.29 s, 43 s of warm-up compiles).
#   ksaconv  bench/ksa_conversion.py: the trained full model -> KSA hybrid by ksa.convert.self_distill,
#            300 s of distillation (849 steps on the H100), eval before / after. Limit 420 s (it took 336 s;
#            with 60 s of distillation and a 150 s limit the stage was killed before its first eval ended).
#   ksagrpo  bench/ksa_grpo.py: GRPO + TMN-Reweight on the trained full and KSA policies, 4K prompts, the
#            same 60 steps for both, 8 prompts per task x G = 8, lr 3e-4. Limit 450 s. At lr 1e-4 (4 prompts
#            per task, 80 steps; KSA 1.23 s a step on the H100, full 0.39 s) no reward moved; CPU probes on the
#            same models at 512 tokens (bench/results/ksa_grpo_cpu_pilot/probe_lr*_h100_models/): at 3e-4 the
#            full policy learned the needle (reward 0.49 -> 0.93) and the KSA policy did not, at 1e-3 the
#            KSA policy lost accuracy. Groups are mostly all-right or all-wrong (0-7 of 16 kept), hence
#            twice the prompts.
#   ksaconv8k ksaconv with 8K-token distillation text (2 sequences a step: the tokens of a step unchanged). At 4K
#            (2026-12-05) the student kept 69% at 8K: count fell 1.00 -> 0.08 (the teacher counts right at 8K
#            alone, the curriculum's last length, a length the 4K text never shows), needle 1.00 -> 0.69
#   ksagrpo32k  ksagrpo on kv alone at 32K prompts, 4x the 8K the policies trained to, where both start with room
#            (held-out kv at 32K: full 0.45, KSA 0.41): equal room on one task, which the 4K run lacked (there full
#            was right on needle and kv in every sample, KSA on two-hop). 8 prompts x G = 8, lr 3e-4, 60 steps
#            or 190 s a policy. Limit 540 s
#   ksaconv and ksagrpo read /tmp/ksa_models, or unpack out/ksa_models/*.tar (carried) on a fresh machine:
#   OUT=$OUT bench/run_h200.sh ksarep    then, carry ["out/ksa_models"] (the tars from $OUT/models), one call
#   each (their limits, 420 + 450 s, no longer fit one 600 s call together):
#   OUT=$OUT bench/run_h200.sh ksaconv   and   OUT=$OUT bench/run_h200.sh ksagrpo
#
# Since 2026-12-05 (tenth session) the GPU recipes set rollout.compile_decode: true and rollout.decode_kernel: triton,
# so train / train32k / trainksa* / learnerprof run those; base8k (compile_decode off), fused8k, ksa8k, fused32k,
# pieces32k and ksafused32k pin decode_kernel=torch (the rows they were written to compare; triton8k, triton32k and
# ksatriton32k are their Triton counterparts).
#
# Missing pure-Python dependencies can travel as wheels in .whl/ (installed into /tmp/site).
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv | tee "$OUT/gpu.txt"

LAST_RC=0 DECODE_SET=()  # DECODE_SET: extra train_gpu.py options after a failed kernelcheck
stage() {  # stage NAME SECONDS CMD...
  local name=$1 secs=$2
  shift 2
  echo "=== $name (limit ${secs}s) $(date -u +%T)"
  local t0=$SECONDS
  timeout "$secs" "$@" >>"$OUT/$name.log" 2>&1  # appended: a stage may run several commands
  local rc=$?
  LAST_RC=$rc
  echo "=== $name rc=$rc in $((SECONDS - t0))s"
  tail -n 40 "$OUT/$name.log"
}

ksa_models() {  # the replication's models: /tmp/ksa_models on a warm machine, else the carried tars
  [ -f /tmp/ksa_models/full/config.json ] && return 0
  mkdir -p /tmp/ksa_models && for t in out/ksa_models/*.tar; do tar -xf "$t" -C /tmp/ksa_models || return 1; done
  [ -f /tmp/ksa_models/full/config.json ] || { echo "no models: run ksarep first or carry out/ksa_models"; return 1; }
}

for s in "$@"; do
  case $s in
    attention) stage attention 300 python3 bench/ksa_attention.py --sweep 32768 --impls triton flex reference \
                 --out "$OUT/ksa_attention.json" ;;
    ksatiles) stage ksatiles 420 python3 bench/ksa_attention.py --sweep 32768 --impls triton --lengths 4096 32768 131072 \
                --out "$OUT/ksa_attention_tiles.json" ;;
    tests) stage tests 240 python3 -m pytest -q -p no:cacheprovider -m gpu -x --timeout 200 \
             tests/test_ksa_attention.py tests/test_ksa_model.py tests/test_ksa_cache.py \
             tests/test_rollout_static.py tests/test_rollout_static_ksa.py ;;
    decode) stage decode 300 python3 bench/engine_decode.py --reps 2 --out "$OUT/engine_decode.json" ;;
    rollout) stage rollout 240 python3 bench/ksa_rollout.py --out "$OUT/ksa_rollout.json" ;;
    learner) stage learner 480 python3 bench/learner.py --runs compiled --out "$OUT/learner.json" ;;
    group) for share in "" --no-share; do
             stage "group$share" 240 python3 bench/learner.py --runs 1.7b:32768:golong_optmaster_sac_compile \
               --group 8 --response 2048 $share --out "$OUT/learner_group$share.json"
           done ;;
    ksagroup) stage ksagroup 300 python3 bench/learner.py --group 8 --response 2048 --steps 3 \
                --runs 1.7b:32768:golong_optmaster_sac_compile,1.7b:32768:ksa_optmaster_sac_compile \
                --out "$OUT/learner_group_ksa.json" ;;
    prefix) stage prefix 150 python3 -m pytest -q -p no:cacheprovider -m gpu -x --timeout 140 tests/test_rollout_prefix.py \
              tests/test_rollout_static.py
            stage prefixbench 150 python3 bench/prefix_decode.py --shape 0.6b --prompt-len 8192 --prompts 4 \
              --new-tokens 256 --reps 2 --out "$OUT/prefix_decode.json" ;;
    prefixfuse) stage prefixfuse 330 python3 bench/prefix_decode.py --shape 0.6b --prompt-len 8192 --prompts 4 \
                  --new-tokens 256 --reps 2 --compile-decode --profile --out "$OUT/prefix_decode_fused.json" ;;
    prefix32k) for ksa in "" --ksa; do
                 stage prefix32k 200 python3 bench/prefix_decode.py --shape 0.6b --prompt-len 32768 --prompts 2 --group 8 \
                   --new-tokens 256 --reps 1 --compile-decode $ksa --out "$OUT/prefix_decode_32k${ksa/--/_}.json"
               done ;;
    gputest) stage gputest 200 python3 -m pytest -q -p no:cacheprovider -m gpu -x tests/test_train_gpu.py tests/test_packing_pieces.py \
               tests/test_triton_decode.py tests/test_rollout_triton_decode.py tests/test_checkpointing.py ;;
    decodekernel) stage decodekernel 150 python3 bench/decode_kernel.py --rows 2 16 --keys 256 1024 4096 32768 \
                    --queries 2 16 32 --out "$OUT/decode_kernel.json" ;;
    splits) stage splits 150 python3 bench/decode_kernel.py --rows 4 2 --keys 8192 32768 --queries 16 --reps 50 \
              --splits 256 512 1024 2048 4096 --out "$OUT/decode_splits.json" ;;
    twopart) stage twopart 120 python3 bench/decode_kernel.py --rows 2 16 --keys 1024 --second-keys 4096 \
               --queries 2 16 32 --out "$OUT/decode_two_parts.json" ;;
    ksaspec) stage ksaspec 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_ksa_attention.py -k one_compile
             for spec in 0 1; do  # the KSA attention kernel with its length arguments unspecialised (0), then specialised
               KSA_TRITON_SPECIALIZE_LENGTHS=$spec stage ksaspec 90 python3 bench/ksa_attention.py --lengths 8192 32768 \
                 --impls triton --reps 30 --out "$OUT/ksa_attention_specialize$spec.json"
             done ;;
    verify) stage verify 260 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_triton_decode.py tests/test_rollout_look_ahead.py \
              tests/test_rollout_triton_decode.py tests/test_checkpointing.py tests/test_rollout_compile.py ;;
    kernelcheck) stage kernelcheck 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_triton_decode.py \
                   tests/test_rollout_triton_decode.py tests/test_ksa_attention.py
                 # a decode kernel that fails on CUDA must not cost the stages after it their run: they fall back
                 [ "$LAST_RC" = 0 ] || { DECODE_SET=(--set rollout.decode_kernel=torch); echo "decode kernel failed: torch decode"; } ;;
    ratio32k|ratio32ks|full32kpair|ksa32kpair)
              case $s in
                ratio32k) runs=("1.7b:32k:8x2:2048 160" "1.7b:32k:8x2:2048:ksa 290") ;;
                ratio32ks) runs=("1.7b:32k:8x2:2048 110" "1.7b:32k:8x2:2048:ksa 210") ;;
                full32kpair) runs=("1.7b:32k:8x2:2048 250") ;;
                ksa32kpair) runs=("1.7b:32k:8x2:2048:ksa 520") ;;
              esac
              for run in "${runs[@]}"; do
                read -r cfg secs <<<"$run"
                stage ratio32k $((secs + 40)) python3 bench/train_gpu.py "$cfg" --budget-s "$secs" --steps 8 --append \
                  --set model.checkpoint_policy=save_attention "${DECODE_SET[@]}" --out "$OUT/train_gpu_ratio32k.json"
              done ;;
    flexauto) stage flexauto 420 python3 bench/learner.py --group 8 --response 2048 --steps 3 \
                --runs 1.7b:32768:golong_optmaster_sac_compile,1.7b:32768:golong_optmaster_sac_compile_autotune \
                --out "$OUT/learner_group_autotune.json" ;;
    flexsdpa) stage flexsdpa 300 python3 bench/learner.py --group 8 --response 2048 --steps 3 \
                --runs 1.7b:32768:golong_optmaster_sac_compile,1.7b:32768:golong_optmaster_sac_compile_sdpa \
                --out "$OUT/learner_group_sdpa.json" ;;
    triton8k) for run in "0.6b:8k:8x4:256:fused 110" "0.6b:8k:8x4:256:ksa:fused 150"; do
                set -- $run
                stage triton8k $(($2 + 40)) python3 bench/train_gpu.py "$1" --budget-s "$2" --steps 20 --append \
                  --set rollout.decode_kernel=triton --out "$OUT/train_gpu_triton.json"
              done ;;
    ksatriton32k) stage ksatriton32k 560 python3 bench/train_gpu.py 1.7b:32k:8x2:2048:ksa:fused --budget-s 500 --steps 10 \
                    --set model.checkpoint_policy=save_attention --set rollout.decode_kernel=triton --append \
                    --out "$OUT/train_gpu_triton32k.json" ;;
    learnerprof) stage learnerprof 245 python3 bench/train_gpu.py 1.7b:32k:8x2:2048:fused --budget-s 200 --steps 4 \
                   --set model.checkpoint_policy=save_attention --profile-learner 3 --append \
                   --out "$OUT/train_gpu_learnerprof.json" ;;
    ksalearnerprof) stage ksalearnerprof 400 python3 bench/train_gpu.py 1.7b:32k:8x2:2048:ksa:fused --budget-s 350 --steps 4 \
                      --set model.checkpoint_policy=save_attention --profile-learner 3 --append \
                      --out "$OUT/train_gpu_learnerprof.json" ;;
    triton32k) stage triton32k 245 python3 bench/train_gpu.py 1.7b:32k:8x2:2048:fused --budget-s 200 --steps 10 \
                 --set model.checkpoint_policy=save_attention --set rollout.decode_kernel=triton --append \
                 --out "$OUT/train_gpu_triton32k.json" ;;
    train) for run in "0.6b:8k:8x4:256 120" "0.6b:8k:8x4:256:eager 90" "0.6b:8k:8x4:256:noshare 100"; do
             read -r cfg secs <<<"$run"  # a process per configuration: one that overruns cannot stop the next
             stage train $((secs + 40)) python3 bench/train_gpu.py "$cfg" --budget-s "$secs" --steps 20 --append \
               --out "$OUT/train_gpu_0.6b.json"
           done ;;
    train32k) stage train32k 210 python3 bench/train_gpu.py 1.7b:32k:8x2:2048 --budget-s 190 --steps 8 \
                --out "$OUT/train_gpu_1.7b.json" ;;
    trl) stage trl 320 python3 bench/trainer_vs_trl.py --model qwen3-0.6b --length 8192 --group 8 --prompts 4 \
           --max-new 256 --steps 3 --repeats 1 --out "$OUT/trainer_vs_trl_h200.json" ;;
    trainksa|trainksa2|ksa32k)
      if [ "$s" = trainksa ]; then runs=("0.6b:8k:8x4:256:ksa 120" "0.6b:32k:8x2:2048 190" "0.6b:32k:8x2:2048:ksa 190")
      elif [ "$s" = trainksa2 ]; then runs=("1.7b:32k:8x2:2048:ksa 190" "0.6b:64k:8x1:2048 160" "0.6b:64k:8x1:2048:ksa 160")
      else runs=("1.7b:32k:8x2:2048:ksa 190"); fi
      for run in "${runs[@]}"; do
        read -r cfg secs <<<"$run"
        stage "$s" $((secs + 40)) python3 bench/train_gpu.py "$cfg" --budget-s "$secs" --steps 8 --append \
          --out "$OUT/train_gpu_ksa.json"
      done ;;
    pair32k|pair8k)  # issue 16's 0.6B rows at the GPU recipe's settings, full then KSA, save_attention
      if [ "$s" = pair32k ]; then runs=("0.6b:32k:8x2:2048 100" "0.6b:32k:8x2:2048:ksa 170")
      else runs=("0.6b:8k:8x4:256 110" "0.6b:8k:8x4:256:ksa 300"); fi  # first steps on an empty cache: 45 s, 143 s
      for run in "${runs[@]}"; do
        read -r cfg secs <<<"$run"
        stage "$s" $((secs + 40)) python3 bench/train_gpu.py "$cfg" --budget-s "$secs" --steps 12 --append \
          --set model.checkpoint_policy=save_attention --out "$OUT/train_gpu_06b.json"
      done ;;
    noahead8k) stage noahead8k 150 python3 bench/train_gpu.py 0.6b:8k:8x4:256 --budget-s 110 --steps 12 \
                 --set model.checkpoint_policy=save_attention --set rollout.look_ahead=false \
                 --out "$OUT/train_gpu_06b_noahead.json" ;;
    tune8k) TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 stage tune8k 150 python3 bench/train_gpu.py 0.6b:8k:8x4:256 --budget-s 110 \
              --steps 12 --set model.checkpoint_policy=save_attention --out "$OUT/train_gpu_tune8k.json" ;;
    sumcols)  # the 0.6B / 8K KSA row (GPU recipe, save_attention) by default, then with summary columns in every
              # decode step; each on its own empty inductor and Triton caches, so both first steps are a fresh machine's
      for every in false true; do
        TORCHINDUCTOR_CACHE_DIR=/tmp/ind_sumcols_$every TRITON_CACHE_DIR=/tmp/triton_sumcols_$every TORCH_LOGS=recompiles \
          stage sumcols 230 python3 bench/train_gpu.py 0.6b:8k:8x4:256:ksa --budget-s 190 --steps 12 \
          --set model.checkpoint_policy=save_attention --set rollout.ksa_summaries_every_step=$every \
          --out "$OUT/train_gpu_sumcols_$every.json"
      done ;;
    base8k) stage base8k 160 python3 bench/train_gpu.py 0.6b:8k:8x4:256:unfused --budget-s 120 --steps 20 --append \
              --set rollout.decode_kernel=torch --out "$OUT/train_gpu_fused.json" ;;  # fused8k's baseline
    fused8k) for run in "0.6b:8k:8x4:256:fused 120" "0.6b:8k:8x4:256:ksa:fused 180"; do
               read -r cfg secs <<<"$run"  # KSA: a first step of 73-94 s on the H100 (2026-12-05)
               stage fused8k $((secs + 40)) python3 bench/train_gpu.py "$cfg" --budget-s "$secs" --steps 20 --append \
                 --set rollout.decode_kernel=torch --out "$OUT/train_gpu_fused.json"
             done ;;
    ksa8k) stage ksa8k 220 python3 bench/train_gpu.py 0.6b:8k:8x4:256:ksa:unfused --budget-s 180 --steps 20 --append \
             --set rollout.decode_kernel=torch --out "$OUT/train_gpu_fused.json" ;;  # fused8k's KSA row without compile_decode, same machine
    prefixtune) for tune in 0 1; do  # the trainer's decode layout, inductor's GEMM autotuning off (0) then on (1)
                  TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=$tune stage prefixtune 200 python3 bench/prefix_decode.py --shape 0.6b \
                    --prompt-len 8192 --prompts 4 --new-tokens 256 --reps 2 --compile-decode --only shared+compile \
                    --decode-kernel triton --fuse-projections --profile --out "$OUT/prefix_decode_tune$tune.json"
                done ;;
    prefixfuse2) stage prefixfuse 250 python3 bench/prefix_decode.py --shape 0.6b --prompt-len 8192 --prompts 4 \
                   --new-tokens 256 --reps 1 --compile-decode --profile --out "$OUT/prefix_decode_fused.json" ;;
    fused32k) stage fused32k 245 python3 bench/train_gpu.py 1.7b:32k:8x2:2048:fused --budget-s 200 --steps 10 \
                --set model.checkpoint_policy=save_attention --set rollout.decode_kernel=torch --append --out "$OUT/train_gpu_fused32k.json" ;;
    keptgpu) stage keptgpu 150 python3 -m pytest -q -p no:cacheprovider -m gpu -x tests/test_checkpointing.py tests/test_rollout_compile.py ;;
    piecestest) stage piecestest 90 python3 -m pytest -q -p no:cacheprovider -m gpu -x tests/test_packing_pieces.py ;;
    mergedsdpa)  # the shared rows as pieces merged by log-sum-exp (ksa.pieces): GPU test, then one 32K group's learner
      stage piecestest 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_packing_pieces.py
      stage mergedsdpa 300 python3 bench/learner.py --group 8 --response 2048 --steps 3 \
        --runs 1.7b:32768:golong_optmaster_sac_compile,1.7b:32768:golong_optmaster_sac_compile_sdpa \
        --out "$OUT/learner_group_merged.json" ;;
    raggedsdpa)  # the shared-prompt pieces with cuDNN's length-bucketed plans (one per power-of-two length)
      TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 stage raggedtest 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_packing_pieces.py \
        tests/test_rollout_prefill.py tests/test_ksa_shared.py
      TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 stage raggedplans 60 python3 bench/cudnn_plans.py --lengths 4 --out "$OUT/cudnn_plans_ragged.json"
      for ragged in 1 0; do  # one 32K group's learner with new lengths every step: FlexAttention, then sdpa with / without
        runs=1.7b:32768:golong_optmaster_sac_compile_sdpa
        [ $ragged = 1 ] && runs=1.7b:32768:golong_optmaster_sac_compile,$runs
        TORCH_CUDNN_SDPA_AVOID_RECOMPILE=$ragged stage raggedgroup 200 python3 bench/learner.py --group 8 --response 2048 \
          --steps 5 --vary --runs $runs --out "$OUT/learner_group_vary_ragged$ragged.json"
      done ;;
    raggedksa) TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 stage raggedksa 560 python3 bench/train_gpu.py 1.7b:32k:8x2:2048:ksa \
                 --budget-s 520 --steps 8 --set model.checkpoint_policy=save_attention --out "$OUT/train_gpu_raggedksa.json" ;;
    raggedrows|ragged8k)  # responses ending at their own lengths (--stop-every): FlexAttention, then sdpa with cuDNN's
      # plans per power-of-two length; 1.7B / 32K (~10 min) or 0.6B / 8K (~5 min), one call
      if [ "$s" = raggedrows ]; then cfg=1.7b:32k:8x2:2048 secs=250 steps=8 every=1024; else cfg=0.6b:8k:8x4:256 secs=110 steps=12 every=128; fi
      for kernel in flex sdpa; do
        TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 stage "$s" $((secs + 40)) python3 bench/train_gpu.py $cfg --budget-s $secs \
          --steps $steps --stop-every $every --set model.checkpoint_policy=save_attention \
          --set optim.shared_prompt_kernel=$kernel --out "$OUT/train_gpu_${s}_$kernel.json"
      done ;;
    raggedpair)  # raggedtest, then 1.7B / 32K flex vs sdpa, responses of their own lengths (--stop-every 1024), all with
      # cuDNN's length-bucketed plans; ~7.5 min
      export TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1
      stage raggedtest 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_packing_pieces.py \
        tests/test_rollout_prefill.py tests/test_ksa_shared.py
      for kernel in flex sdpa; do
        stage raggedpair 170 python3 bench/train_gpu.py 1.7b:32k:8x2:2048 --budget-s 135 --steps 8 --stop-every 1024 \
          --set model.checkpoint_policy=save_attention --set optim.shared_prompt_kernel=$kernel --out "$OUT/train_gpu_raggedpair_$kernel.json"
      done
      unset TORCH_CUDNN_SDPA_AVOID_RECOMPILE ;;
    lsefix)  # the pieces' backward given the log-sum-exp in its forward's layout, with cuDNN's length-bucketed plans: the GPU
      # tests, then 1.7B / 32K sdpa with responses of their own lengths (~5 min)
      export TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1
      stage raggedtest 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_packing_pieces.py \
        tests/test_rollout_prefill.py tests/test_ksa_shared.py
      stage raggedsdpa32k 160 python3 bench/train_gpu.py 1.7b:32k:8x2:2048 --budget-s 125 --steps 8 --stop-every 1024 \
        --set model.checkpoint_policy=save_attention --set optim.shared_prompt_kernel=sdpa --out "$OUT/train_gpu_raggedpair_sdpa.json"
      unset TORCH_CUDNN_SDPA_AVOID_RECOMPILE ;;
    envcheck)  # cuDNN's length-bucketed plans (TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1) in one call (~10 min): the GPU tests of
      # the pieces, the chunked prefill and the KSA window pieces; 0.6B / 8K with sdpa (prefills of new lengths: the plans'
      # cost); 1.7B / 32K flex then sdpa, responses of their own lengths (--stop-every 1024)
      export TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1
      stage raggedtest 110 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_packing_pieces.py \
        tests/test_rollout_prefill.py tests/test_ksa_shared.py
      stage env8k 135 python3 bench/train_gpu.py 0.6b:8k:8x4:256 --budget-s 100 --steps 12 --stop-every 128 \
        --set model.checkpoint_policy=save_attention --set optim.shared_prompt_kernel=sdpa --out "$OUT/train_gpu_env8k.json"
      for kernel in flex sdpa; do
        stage env32k 165 python3 bench/train_gpu.py 1.7b:32k:8x2:2048 --budget-s 130 --steps 8 --stop-every 1024 \
          --set model.checkpoint_policy=save_attention --set optim.shared_prompt_kernel=$kernel --out "$OUT/train_gpu_env32k_$kernel.json"
      done
      unset TORCH_CUDNN_SDPA_AVOID_RECOMPILE ;;
    defaults)  # golong's defaults since the nineteenth session (TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 set by golong itself,
      # the recipe's sdpa pieces): the pieces' GPU tests, then issue 15's two rows in steady state: 0.6B / 8K (G=8 x 4,
      # 256 new) and 1.7B / 32K (G=8 x 2, 2K new), save_attention (~8 min)
      stage raggedtest 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_packing_pieces.py \
        tests/test_rollout_prefill.py tests/test_ksa_shared.py
      stage defaults8k 135 python3 bench/train_gpu.py 0.6b:8k:8x4:256 --budget-s 100 --steps 20 \
        --set model.checkpoint_policy=save_attention --out "$OUT/train_gpu_defaults8k.json"
      stage defaults32k 235 python3 bench/train_gpu.py 1.7b:32k:8x2:2048 --budget-s 200 --steps 10 \
        --set model.checkpoint_policy=save_attention --out "$OUT/train_gpu_defaults32k.json" ;;
    tinyfix)  # the pieces of one token (cuDNN's backward refuses s_q = s_kv = 1: defaults8k failed at its step 12 on
      # 2026-12-06) through the small exact path: the GPU tests, defaults8k again, then the KSA 1.7B / 32K row with room for
      # steady steps after its cold first step (~190-225 s on a fresh H100) (~9.5 min)
      stage raggedtest 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_packing_pieces.py \
        tests/test_rollout_prefill.py tests/test_ksa_shared.py
      stage defaults8k 135 python3 bench/train_gpu.py 0.6b:8k:8x4:256 --budget-s 100 --steps 20 \
        --set model.checkpoint_policy=save_attention --out "$OUT/train_gpu_defaults8k.json"
      stage ksa32k 375 python3 bench/train_gpu.py 1.7b:32k:8x2:2048:ksa --budget-s 340 --steps 12 \
        --set model.checkpoint_policy=save_attention --out "$OUT/train_gpu_ksa32k.json" ;;
    ksa32kb) stage ksa32k 400 python3 bench/train_gpu.py 1.7b:32k:8x2:2048:ksa --budget-s 365 --steps 12 \
               --set model.checkpoint_policy=save_attention --out "$OUT/train_gpu_ksa32k.json" ;;  # tinyfix's KSA row alone
    defaultsq)  # defaults' two rows within less device time (~6 min): 0.6B / 8K 90 s, 1.7B / 32K 180 s
      stage defaults8k 120 python3 bench/train_gpu.py 0.6b:8k:8x4:256 --budget-s 90 --steps 20 \
        --set model.checkpoint_policy=save_attention --out "$OUT/train_gpu_defaults8k.json"
      stage defaults32k 215 python3 bench/train_gpu.py 1.7b:32k:8x2:2048 --budget-s 180 --steps 10 \
        --set model.checkpoint_policy=save_attention --out "$OUT/train_gpu_defaults32k.json" ;;
    auto8k) stage auto8k 120 python3 bench/train_gpu.py 0.6b:8k:8x4:256 --budget-s 90 --steps 20 \
              --set model.checkpoint_policy=save_attention --out "$OUT/train_gpu_auto8k.json" ;;  # the recipes' "auto": flex at 256 new
    ksapair32k)  # issue 16's 1.7B / 32K ratio in one call: KSA (its full layers through the pieces), then full attention
      # with the sdpa pieces, both with cuDNN's length-bucketed plans, 2K new tokens, save_attention (~8 min)
      for run in "1.7b:32k:8x2:2048:ksa 250" "1.7b:32k:8x2:2048 130"; do
        read -r cfg secs <<<"$run"
        TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1 stage ksapair32k $((secs + 35)) python3 bench/train_gpu.py "$cfg" --budget-s "$secs" \
          --steps 8 --append --set model.checkpoint_policy=save_attention --set optim.shared_prompt_kernel=sdpa \
          --out "$OUT/train_gpu_ksapair32k.json"
      done ;;
    sdpa32k) stage sdpa32k 290 python3 bench/train_gpu.py 1.7b:32k:8x2:2048 --budget-s 250 --steps 8 --append \
               --set model.checkpoint_policy=save_attention --set optim.shared_prompt_kernel=sdpa \
               --out "$OUT/train_gpu_sdpa32k.json" ;;
    pieces32k) stage pieces32k 245 python3 bench/train_gpu.py 1.7b:32k:8x2:2048:fused --budget-s 200 --steps 10 \
                 --set model.checkpoint_policy=save_attention --set optim.shared_prompt_kernel=sdpa --append \
                 --set rollout.decode_kernel=torch --out "$OUT/train_gpu_pieces32k.json" ;;
    ksafused32k) stage ksafused32k 560 python3 bench/train_gpu.py 1.7b:32k:8x2:2048:ksa:fused --budget-s 500 --steps 10 \
                   --set model.checkpoint_policy=save_attention --set rollout.decode_kernel=torch --append --out "$OUT/train_gpu_fused32k.json" ;;
    groupckpt) stage groupckpt 420 python3 bench/learner.py --group 8 --response 2048 --steps 3 \
                 --runs 1.7b:32768:golong_optmaster_sac_compile,1.7b:32768:golong_optmaster_full_compile \
                 --out "$OUT/learner_group_ckpt.json" ;;
    prof32k|ksaprof32k) ksa=${s%prof32k}; ksa=${ksa:+--ksa}  # ~2 min each: the trainer's decode layout, profiled
               stage "$s" 200 python3 bench/prefix_decode.py --shape 0.6b --prompt-len 32768 --prompts 2 --group 8 \
                 --new-tokens 256 --reps 1 --compile-decode --only shared+compile --decode-kernel triton $ksa --profile \
                 --out "$OUT/prefix_decode_prof32k${ksa/--/_}.json" ;;
    gemm) stage gemm 90 python3 bench/decode_gemm.py --shapes 0.6b 1.7b --rows 16 32 64 --out "$OUT/decode_gemm.json" ;;
    ksaprof8k) stage ksaprof8k 150 python3 bench/prefix_decode.py --shape 0.6b --prompt-len 8192 --prompts 4 \
                 --new-tokens 256 --reps 1 --compile-decode --only shared+compile --decode-kernel triton --ksa --profile \
                 --out "$OUT/prefix_decode_prof8k_ksa.json"
               mkdir -p "$OUT/inductor_code"  # the compiled decode layers' code, for the copy kernels in the profile
               grep -rl --include='*.py' "def call" /tmp/torchinductor_* 2>/dev/null | xargs -r grep -l "copy" \
                 | head -n 12 | xargs -r cp -t "$OUT/inductor_code" ;;
    fusedecode) for fuse in "" --fuse-projections; do  # ~1 min each: decode alone, separate then stacked projections
                  stage fusedecode 120 python3 bench/prefix_decode.py --shape 0.6b --prompt-len 8192 --prompts 4 \
                    --new-tokens 256 --reps 2 --compile-decode --only shared+compile --decode-kernel triton $fuse \
                    --out "$OUT/prefix_decode_fuse${fuse:+d}.json"
                done ;;
    fuse8k) for run in "0.6b:8k:8x4:256 110" "0.6b:8k:8x4:256:ksa 150"; do  # triton8k's rows with stacked projections
              read -r cfg secs <<<"$run"
              stage fuse8k $((secs + 40)) python3 bench/train_gpu.py "$cfg" --budget-s "$secs" --steps 20 --append \
                --set rollout.fuse_projections=true --out "$OUT/train_gpu_fuse.json"
            done ;;
    prefixksa) stage prefixksa 300 python3 bench/prefix_decode.py --shape 0.6b --prompt-len 8192 --prompts 4 \
                 --new-tokens 256 --reps 1 --compile-decode --ksa --profile --out "$OUT/prefix_decode_ksa_fused.json" ;;
    ksarep1) stage ksarep1 560 python3 bench/ksa_replication.py --budget-s 420 --seed 1 --out "$OUT/rep_seed1" \
               --save-models /tmp/ksa_models_seed1 --pack-models "$OUT/models_seed1" ;;
    ksarep) stage ksarep 560 python3 bench/ksa_replication.py --budget-s 420 --out "$OUT/rep" \
              --save-models /tmp/ksa_models --pack-models "$OUT/models" ;;
    ksaconv) ksa_models && stage ksaconv 420 python3 bench/ksa_conversion.py --models /tmp/ksa_models \
               --out "$OUT/conv" --budget-s 300 --student-dir /tmp/ksa_conv ;;
    ksaconv8k) ksa_models && stage ksaconv8k 420 python3 bench/ksa_conversion.py --models /tmp/ksa_models \
                 --out "$OUT/conv8k" --budget-s 300 --seq-len 8192 --batch-size 2 --student-dir /tmp/ksa_conv8k ;;
    ksagrpo) ksa_models && stage ksagrpo 450 python3 bench/ksa_grpo.py --models /tmp/ksa_models --out "$OUT/grpo" \
               --budget-s 320 --steps 60 --lr 3e-4 --prompts-per-task 8 ;;
    ksagrpo32k) ksa_models && stage ksagrpo32k 540 python3 bench/ksa_grpo.py --models /tmp/ksa_models --out "$OUT/grpo32k" \
                  --tasks kv --length 32768 --prompts-per-task 8 --group 8 --steps 60 --lr 3e-4 \
                  --micro-batch-tokens 36864 --budget-s 380 ;;
    *) echo "unknown stage $s" ;;
  esac
done
