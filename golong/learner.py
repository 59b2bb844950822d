"""The learner: one policy (+ optional reference) that turns scored samples into an optimizer step.

train_step(samples):
  1. pack prompt+response sequences into token-budget micro-batches (golong.packing);
  2. old log-probs: with one optimizer step per batch they come from the same forward (ratio = 1,
     the on-policy case); with several (updates_per_batch passes x mini_batches), from one no-grad
     pass before the first step. Dropout is off in both (the sampler has none, and the first
     step's ratio must be exactly 1);
  3. reference log-probs (only if algo.kl_coef > 0): a frozen copy of the initial weights, or for
     LoRA the same model with the adapter disabled;
  4. PPO-clip loss (golong.algos.policy_loss, optionally weighted by rollout IS) with gradient
     accumulation in float32, each micro-batch's loss normalised by the *whole mini-batch's* token
     (or sequence) count, so the accumulated gradient is that of the mini-batch aggregate;
  5. grad-norm clip, AdamW step, linear warm-up then constant learning rate.

With several learner ranks (torch.distributed initialised, see golong.distributed) the model and the
reference are sharded with FSDP2, every rank gets the same batch and trains on its token-balanced
share, and the counts of step 4 are summed over ranks, so the update equals one process's.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from golong import distributed as gdist
from golong.algos import aggregate, kl_penalty, policy_loss, rollout_is_weights
from golong.config import AlgoConfig, ModelConfig, OptimConfig
from golong.models import ModelLoadError, load_policy, prepare_policy  # noqa: F401  (re-exported)
from golong.packing import (
    PackedRow,
    bucket_length,
    pack,
    pack_shared,
    packed_logprobs,
    pad_stack,
    plan_micro_batches,
    plan_shared_micro_batches,
    shared_attention,
    supports_prompt_sharing,
    uses_ksa_layout,
)


@dataclass
class Sample:
    """One response to train on."""

    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float
    sampler_logprobs: list[float] | None = None  # from the rollout engine: drift metrics, rollout IS
    reward_type: str = ""  # the prompt's reward type (EM, F1, ...): the key advantages pool by
    sampled: bool = True  # drawn from the rollout engine (False: a reference answer; no rollout IS)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Learner:
    def __init__(
        self,
        model: ModelConfig,
        optim: OptimConfig,
        algo: AlgoConfig,
        *,
        total_steps: int,
        seed: int = 0,
        device: str | None = None,
        temperature: float = 1.0,
        policy: tuple[Any, Any] | None = None,
    ) -> None:
        """`temperature` is the sampler's: logits are divided by it so ratios and drift compare like with like.

        `policy` = (model, tokenizer) trains an already built causal LM instead of loading model.path
        (model.dtype, checkpointing, KSA and LoRA of `model` are still applied).
        """
        if algo.loss_agg == "seq-mean-token-sum-norm" and not algo.loss_norm_tokens:
            raise ValueError("loss_agg seq-mean-token-sum-norm needs algo.loss_norm_tokens (a recipe sets it to rollout.max_new_tokens)")
        torch.manual_seed(seed)
        random.seed(seed)
        self.model_cfg, self.optim_cfg, self.algo_cfg = model, optim, algo
        self.total_steps = total_steps
        self.temperature = temperature
        self.device = torch.device(device) if device else _default_device()
        # several learner ranks (torch.distributed initialised, see golong.distributed): FSDP2 over them
        self.dist = gdist.current_context()
        if self.dist is not None and model.lora is not None:
            raise ValueError("LoRA with several learner ranks is not supported yet; use one learner rank (cluster.learner_gpus=1)")
        if self.dist is not None and device is None:
            self.device = self.dist.device
        # bf16 compute over fp32 master weights: an lr-1e-6 update is far below bf16's resolution.
        # With LoRA only the adapters are trained (peft keeps them float32): the frozen base stays bf16.
        # master_weights="optimizer" instead runs a bf16 model and keeps the float32 copies beside it.
        self.autocast = model.dtype == "bfloat16" and optim.fp32_master_weights
        self.is_lora = model.lora is not None
        optimizer_master = self.autocast and not self.is_lora and optim.master_weights == "optimizer"
        self.autocast = self.autocast and not optimizer_master
        # sharded: FSDP gathers float32 shards as bf16 for compute, the same split without a second copy
        fsdp_bf16 = optimizer_master and self.dist is not None
        optimizer_master = optimizer_master and not fsdp_bf16
        master = (self.autocast or fsdp_bf16) and not self.is_lora
        load_cfg = model.model_copy(update={"dtype": "float32"}) if master else model
        if policy is None:
            self._model, self._tokenizer = load_policy(load_cfg, device=self.device)
        else:
            built, self._tokenizer = policy
            built.to(torch.float32 if load_cfg.dtype == "float32" else torch.bfloat16)
            self._model = prepare_policy(built, load_cfg, device=self.device)
        self._ref = None
        if algo.kl_coef > 0 and not self.is_lora:
            # the reference computes exactly as the policy's forward does (under autocast: float32
            # weights, bf16 matmuls), so the step-0 KL is exactly 0
            self._ref = copy.deepcopy(self._model).eval().requires_grad_(False)
            if fsdp_bf16:
                self._ref.to(torch.bfloat16)
        # model -> its FSDP root (whose forward gives the packed log-probs); empty for one rank
        self._roots: dict[int, Any] = {}
        if self.dist is not None:
            self._roots[id(self._model)] = gdist.shard(self._model, self.dist, bf16_compute=fsdp_bf16)
            if self._ref is not None:
                self._roots[id(self._ref)] = gdist.shard(self._ref, self.dist)
        if model.compile:
            compile_layers(self._model, self.device)
        params = [p for p in self._model.parameters() if p.requires_grad]
        # (bf16 parameter, its float32 master copy): the optimizer steps the copies
        self._masters = [(p, p.detach().float().clone()) for p in params] if optimizer_master else []
        if self._masters:
            params = [m for _, m in self._masters]
        # low-precision parameters whose micro-batch gradients are summed in float32 (`_accumulate_grads`)
        self._lowp = [p for p, _ in self._masters] if self._masters else (
            [p for p in params if p.dtype != torch.float32] if self.dist is None else [])
        self._grad32: list[torch.Tensor | None] = [None] * len(self._lowp)
        # fused: one kernel for the whole update on CUDA (the multi-tensor foreach path elsewhere)
        on_cuda = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay,
            fused=on_cuda or None, foreach=None if on_cuda else False,
        )
        warm = optim.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        )
        self.step = 0
        self._graphs_before = compiled_graphs()  # the metric counts this learner's graphs, not the process's

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self._tokenizer

    # ------------------------------------------------------------ forward helpers

    def _rows(self, samples: list[Sample]) -> list[tuple[list[int], PackedRow]]:
        """Micro-batches as (sample indices, packed row): with share_prompts, the samples of one prompt
        behind a single copy of it; otherwise each (prompt, response) packed on its own."""
        budget = self.optim_cfg.micro_batch_tokens
        groups: dict[tuple[int, ...], list[int]] = {}
        if self.optim_cfg.share_prompts and supports_prompt_sharing(self._model):
            for i, s in enumerate(samples):
                groups.setdefault(tuple(s.prompt_ids), []).append(i)
        if 0 < len(groups) < len(samples):
            prompts = list(groups)
            members = [[(i, len(samples[i].response_ids)) for i in groups[p]] for p in prompts]
            rows, ksa_layout = [], uses_ksa_layout(self._model)
            for units in plan_shared_micro_batches([len(p) for p in prompts], members, budget):
                size = sum(len(samples[u[0]].prompt_ids) + sum(len(samples[i].response_ids) for i in u) for u in units)
                # padded to a bucket length: compiled attention and layers see a few shapes, not one per row
                # (not KSA rows: the KSA model lays its row out with summary slots of its own)
                row = pack_shared([(samples[u[0]].prompt_ids, [samples[i].response_ids for i in u]) for u in units],
                                  pad_to=None if ksa_layout else bucket_length(size))
                rows.append(([i for u in units for i in u], row))
            return rows
        lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
        bins = plan_micro_batches(lengths, budget)
        return [(b, pack([samples[i].prompt_ids for i in b], [samples[i].response_ids for i in b])) for b in bins]

    def _logprobs(self, model, row: PackedRow) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            root = self._roots.get(id(model))
            if root is not None:
                return root.logprobs(row, self.optim_cfg.logprob_chunk, self.temperature)
            return packed_logprobs(model, row, chunk=self.optim_cfg.logprob_chunk, temperature=self.temperature)

    @torch.no_grad()
    def compute_logprobs(self, samples: list[Sample]) -> list[torch.Tensor]:
        """Per-token log-probs [R_i] (float32, CPU) of each sample's response under the current policy."""
        self._model.eval()
        out: list[torch.Tensor | None] = [None] * len(samples)
        for idx, row in self._rows(samples):
            lps, _ = self._logprobs(self._model, row)
            for i, lp in zip(idx, lps, strict=True):
                out[i] = lp.float().cpu()
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def _ref_logprobs(self, row: PackedRow) -> list[torch.Tensor]:
        if self.is_lora:
            with self._model.disable_adapter():
                return self._logprobs(self._model, row)[0]
        return self._logprobs(self._ref, row)[0]

    # ------------------------------------------------------------ the step

    def train_step(self, samples: list[Sample]) -> dict[str, float]:
        """One batch: `updates_per_batch` passes, each `mini_batches` optimizer steps.

        Returns loss, pg_loss, kl, entropy, clip_frac, approx_kl, ratio_mean, grad_norm (and the
        rollout IS metrics) averaged over every optimizer step of every pass; lr; drift / drift_kl
        (when samples carry sampler log-probs); tokens, tokens_per_s, learner_time_s.
        """
        if not samples:
            raise ValueError("train_step needs at least one sample")
        t0 = time.perf_counter()
        algo = self.algo_cfg
        plans = [self._plan(mb) for mb in _mini_batches(samples, algo.mini_batches)]
        self._policy_mode()
        ref = [[self._ref_logprobs(row) for _, row in p.rows] for p in plans] if algo.kl_coef > 0 else None
        old = None
        if algo.updates_per_batch > 1 or len(plans) > 1:  # off-policy after the first step: fix pi_old now
            old = [[self._frozen_logprobs(row) for _, row in p.rows] for p in plans]
        learner_lps: dict[int, torch.Tensor] = {}  # id(sample) -> pi_old log-probs, for drift
        steps: list[dict[str, float]] = []
        for update in range(algo.updates_per_batch):
            for k, plan in enumerate(plans):
                sums: dict[str, float] = {}
                for r, (idx, row) in enumerate(plan.rows):
                    if not idx:  # an idle micro-batch of a rank with fewer than the others
                        self._idle_micro_batch(row)
                        continue
                    part, logps = self._micro_batch(
                        row, [plan.samples[i] for i in idx], old[k][r] if old else None, ref[k][r] if ref else None,
                        plan.total, weight=row.response_tokens / max(plan.tokens, 1),
                    )
                    for name, v in part.items():
                        sums[name] = sums.get(name, 0.0) + v
                    if update == 0:
                        # tokens through the model (shared prompts once), counted over the first pass
                        sums["packed_tokens"] = sums.get("packed_tokens", 0.0) + float(row.input_ids.shape[1] - row.padding)
                        sums["pad_tokens"] = sums.get("pad_tokens", 0.0) + float(row.padding)
                        for i, lp in zip(idx, old[k][r] if old else logps, strict=True):
                            learner_lps[id(plan.samples[i])] = lp
                steps.append({**(self.dist.sum_dicts(sums) if self.dist is not None else sums),
                              "grad_norm": self._optimizer_step()})
        metrics = {name: sum(st.get(name, 0.0) for st in steps) / len(steps) for name in steps[0]}
        for name in ("packed_tokens", "pad_tokens"):
            metrics[name] = sum(st.get(name, 0.0) for st in steps)
        metrics.update(optimizer_steps=float(len(steps)), lr=self.scheduler.get_last_lr()[0])
        self.scheduler.step()
        self.step += 1
        mine = [s for p in plans for s in p.samples]
        metrics.update(self._drift_metrics(mine, [learner_lps.get(id(s)) for s in mine]))
        elapsed = time.perf_counter() - t0
        metrics.update(tokens=float(sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)),
                       response_tokens=float(sum(len(s.response_ids) for s in samples)), learner_time_s=elapsed)
        metrics["tokens_per_s"] = metrics["tokens"] / max(elapsed, 1e-9)
        metrics["compiled_graphs"] = compiled_graphs() - self._graphs_before
        return metrics

    def _plan(self, mini_batch: list[Sample]) -> _MiniBatch:
        """This rank's packed rows of one mini-batch and the mini-batch's (all ranks') loss denominators."""
        mine = mini_batch
        if self.dist is not None:  # this rank's share; the denominators stay the whole mini-batch's
            mine = [mini_batch[i] for i in self.dist.my_share([len(s.prompt_ids) + len(s.response_ids) for s in mini_batch])]
        rows = self._rows(mine)
        if self.dist is not None:
            rows = gdist.pad_rows(rows, self.dist)
        tokens = sum(len(s.response_ids) for s in mini_batch)
        total = tokens if self.algo_cfg.loss_agg == "token-mean" else sum(1 for s in mini_batch if s.response_ids)
        return _MiniBatch(mine, rows, total, tokens)

    def _drift_metrics(self, samples: list[Sample], learner_lps: list[torch.Tensor | None]) -> dict[str, float]:
        if self.dist is not None:
            return gdist.global_drift(self.dist, [
                (s.sampler_logprobs, lp) for s, lp in zip(samples, learner_lps, strict=True)
                if s.sampler_logprobs is not None and lp is not None and len(s.sampler_logprobs)])
        return self._drift(samples, learner_lps)

    def _policy_mode(self) -> None:
        """Train mode (gradient checkpointing, KSA training paths) with every dropout off: the rollout
        engine samples without dropout, so the learner's log-probs are of the same policy, and the
        fixed old log-probs equal the first step's (ratio exactly 1) even with LoRA dropout."""
        self._model.train()
        for module in self._model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.eval()

    @torch.no_grad()
    def _frozen_logprobs(self, row: PackedRow) -> list[torch.Tensor]:
        return [lp.detach() for lp in self._logprobs(self._model, row)[0]]

    def _micro_batch(
        self,
        row: PackedRow,
        samples: list[Sample],
        old: list[torch.Tensor] | None,
        ref: list[torch.Tensor] | None,
        total: int,
        weight: float,
    ) -> tuple[dict[str, float], list[torch.Tensor]]:
        """Forward + backward of one packed row; returns its share of the metrics and its detached log-probs."""
        with shared_attention(self._model, row):  # checkpointed layers recompute in backward under it too
            algo = self.algo_cfg
            logps, ents = self._logprobs(self._model, row)
            detached = [lp.detach() for lp in logps]
            lp, mask = pad_stack(logps)
            olp, _ = pad_stack(old if old is not None else detached)  # one step: old = current, ratio 1
            adv = torch.tensor([s.advantage for s in samples], dtype=torch.float32, device=lp.device)
            weights, is_metrics = self._is_weights(samples, old if old is not None else detached, olp, mask)
            pg, pm = policy_loss(
                lp, olp, adv, mask, clip_low=algo.clip_low, clip_high=algo.clip_high, dual_clip=algo.dual_clip,
                agg=algo.loss_agg, total=total, norm_len=algo.loss_norm_tokens, is_weights=weights,
            )
            loss, kl = pg, torch.zeros((), device=lp.device)
            if ref is not None:
                kl = aggregate(kl_penalty(lp, pad_stack(ref)[0], algo.kl_type), mask, algo.loss_agg, total=total,
                               norm_len=algo.loss_norm_tokens)
                loss = loss + algo.kl_coef * kl
            if loss.requires_grad:
                loss.backward()
                self._accumulate_grads()
            ent, _ = pad_stack(ents)
            part = {
                "loss": loss.item(), "pg_loss": pg.item(), "kl": kl.item(),
                "entropy": float((ent * mask).sum()) * weight / max(row.response_tokens, 1),
                **{k: v * weight for k, v in {**pm, **is_metrics}.items()},  # token-weighted means over micro-batches
            }
            return part, detached

    def _is_weights(self, samples: list[Sample], old: list[torch.Tensor], olp: torch.Tensor, mask: torch.Tensor):
        """Rollout IS weights [B, T] of a micro-batch (None when off); a response without sampler
        log-probs (or not sampled: a reference answer) gets weight 1."""
        algo = self.algo_cfg
        if algo.rollout_is == "off":
            return None, {}
        sampler = [
            torch.tensor(s.sampler_logprobs, dtype=o.dtype, device=o.device)
            if s.sampled and s.sampler_logprobs is not None and len(s.sampler_logprobs) == o.numel() else o
            for s, o in zip(samples, old, strict=True)
        ]
        return rollout_is_weights(olp, pad_stack(sampler)[0], mask, level=algo.rollout_is,
                                  clip=tuple(algo.rollout_is_clip), veto=algo.rollout_is_veto)

    def _idle_micro_batch(self, row: PackedRow) -> None:
        """Forward + backward with a zero loss: keeps this rank in step with the others' FSDP collectives."""
        logps, _ = self._logprobs(self._model, row)
        (torch.cat(logps).sum() * 0.0).backward()
        self._accumulate_grads()

    def _accumulate_grads(self) -> None:
        """After each micro-batch's backward: add the bf16 gradients into float32 sums and free them, so
        the accumulated gradient's rounding does not grow with the number of micro-batches."""
        for k, p in enumerate(self._lowp):
            if p.grad is not None:
                g = p.grad.float()
                self._grad32[k] = g if self._grad32[k] is None else self._grad32[k].add_(g)
                p.grad = None

    def _optimizer_step(self) -> float:
        params = [p for p in self._model.parameters() if p.requires_grad]
        for k, p in enumerate(self._lowp):  # the float32 sums go to the float32 copies (or back to bf16)
            g, self._grad32[k] = self._grad32[k], None
            if self._masters:
                self._masters[k][1].grad = g
            else:
                p.grad = None if g is None else g.to(p.dtype)
        if self._masters:
            params = [m for _, m in self._masters]
        norm = torch.nn.utils.clip_grad_norm_(params, self.optim_cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self._masters:
            with torch.no_grad():
                for p, m in self._masters:
                    p.copy_(m)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor when sharded

    @staticmethod
    def _drift(samples: list[Sample], learner_lps: list[torch.Tensor | None]) -> dict[str, float]:
        """Sampler-vs-learner log-prob drift over response tokens: mean |diff| and k3 KL(sampler || learner)."""
        diffs, kls = [], []
        for s, lp in zip(samples, learner_lps, strict=True):
            if s.sampler_logprobs is None or lp is None or not len(s.sampler_logprobs):
                continue
            if len(s.sampler_logprobs) != lp.numel():
                raise ValueError(f"sample has {len(s.sampler_logprobs)} sampler logprobs for {lp.numel()} response tokens")
            sp = torch.tensor(s.sampler_logprobs, dtype=torch.float32)
            lp = lp.float().cpu()
            diffs.append((sp - lp).abs())
            kls.append(kl_penalty(sp, lp, "k3"))
        if not diffs:
            return {}
        return {"drift": float(torch.cat(diffs).mean()), "drift_kl": float(torch.cat(kls).mean())}

    # ------------------------------------------------------------ weights for the rollout engine

    @torch.no_grad()
    def state_dict_for_sync(self) -> dict[str, torch.Tensor]:
        """Full weights named as in the base HF model, in model.dtype; for LoRA the adapters are merged in (W + s B A)."""
        dtype = torch.bfloat16 if self.model_cfg.dtype == "bfloat16" else torch.float32

        def cast(v: torch.Tensor) -> torch.Tensor:
            return v.detach().to(dtype) if v.is_floating_point() else v.detach()

        if self.dist is not None:  # collective: every rank calls; rank 0 gets the weights (CPU), others {}
            full: dict[str, torch.Tensor] = {}
            for bucket in gdist.iter_full_state(self._model, self.dist, dtype):
                full.update(bucket)
            return full
        if not self.is_lora:
            return {k: cast(v) for k, v in self._model.state_dict().items()}
        from peft.tuners.lora import LoraLayer

        base = self._model.get_base_model()
        merged: dict[str, torch.Tensor] = {}
        lora_modules = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
        for key, value in base.state_dict().items():
            if "lora_" in key:
                continue
            name = key.replace(".base_layer", "")
            owner = key.rsplit(".base_layer.", 1)[0] if ".base_layer." in key else None
            if owner in lora_modules and key.endswith("base_layer.weight"):
                m = lora_modules[owner]
                value = value + m.get_delta_weight(m.active_adapters[0]).to(value.dtype)
            merged[name] = cast(value)
        return merged

    def adapter_state_for_sync(self) -> dict[str, torch.Tensor]:
        """Only the LoRA adapter tensors (peft naming), for engines that load adapters."""
        if not self.is_lora:
            raise ValueError("adapter_state_for_sync needs model.lora to be set")
        from peft import get_peft_model_state_dict

        return {k: v.detach() for k, v in get_peft_model_state_dict(self._model).items()}

    # ------------------------------------------------------------ checkpoints

    def save(self, path: str | Path) -> Path:
        """Atomically write model (or adapter) + tokenizer + optimizer/scheduler/RNG state to `path`."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        if self.dist is not None:  # collective: the full state gathered to rank 0, which writes
            return self._save_sharded(path, tmp)
        tmp.mkdir(parents=True)
        self._model.save_pretrained(tmp / "model")
        self._tokenizer.save_pretrained(tmp / "model")
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "master_weights": [m for _, m in self._masters],
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        torch.save(state, tmp / "trainer_state.pt")
        self._publish(tmp, path)
        return path

    @staticmethod
    def _publish(tmp: Path, path: Path) -> None:
        """Move the finished folder `tmp` to `path`, replacing an older one without a window where neither exists."""
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)

    def _save_sharded(self, path: Path, tmp: Path) -> Path:
        """`save` over several ranks: weights and optimizer state gathered to rank 0 (CPU), written there."""
        if self.dist.rank == 0:
            tmp.mkdir(parents=True)
        gdist.save_checkpoint(self, tmp)
        if self.dist.rank == 0:
            torch.save({"scheduler": self.scheduler.state_dict(), "step": self.step, "master_weights": [],
                        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "cuda": None}},
                       tmp / "trainer_state.pt")
            self._publish(tmp, path)
        torch.distributed.barrier()
        return path

    def load(self, path: str | Path) -> None:
        """Restore what `save` wrote into this learner (same model config)."""
        path = Path(path)
        if not (path / "trainer_state.pt").is_file():
            raise FileNotFoundError(f"{path} is not a golong learner checkpoint (no trainer_state.pt)")
        from safetensors.torch import load_file

        files = sorted((path / "model").glob("*.safetensors"))
        weights: dict[str, torch.Tensor] = {}
        for f in files:
            weights.update(load_file(str(f)))
        if self.is_lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self._model, weights)
        elif self.dist is not None:  # every rank reads the full files and keeps its shards
            gdist.load_checkpoint(self, path, weights)
        else:
            missing, unexpected = self._model.load_state_dict(weights, strict=False)
            tied = {k for k in missing if self._is_tied(k)}
            if unexpected or set(missing) - tied:
                raise ValueError(f"checkpoint {path} does not match the model: missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]}")
        state = torch.load(path / "trainer_state.pt", weights_only=True)  # tensors and plain data only: never unpickle code
        saved = state.get("master_weights") or []
        with torch.no_grad():  # the float32 copies, or (older checkpoints) the bf16 weights upcast
            for i, (p, m) in enumerate(self._masters):
                m.copy_(saved[i] if i < len(saved) else p.float())
        if self.dist is None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def _is_tied(self, key: str) -> bool:
        out = self._model.get_output_embeddings()
        return out is not None and key.startswith("lm_head") and out.weight is self._model.get_input_embeddings().weight


@dataclass
class _MiniBatch:
    samples: list[Sample]  # this rank's samples of the mini-batch
    rows: list[tuple[list[int], PackedRow]]  # their packed micro-batches (indices into `samples`)
    total: int  # the loss denominator of the whole mini-batch (tokens or sequences, all ranks)
    tokens: int  # response tokens of the whole mini-batch


def _mini_batches(samples: list[Sample], n: int) -> list[list[Sample]]:
    """`n` consecutive slices of near-equal size (a GRPO group stays whole when n divides the prompts)."""
    n = max(1, min(n, len(samples)))
    bounds = [round(i * len(samples) / n) for i in range(n + 1)]
    return [samples[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def compiled_graphs() -> float:
    """Graphs torch.compile has built in this process so far (each recompile counts one more): the
    compiled decoder layers and the compiled FlexAttention of shared-prompt rows. The learner's metric
    `compiled_graphs` counts those built since it was created: a long run should settle, not grow
    with every step."""
    from torch._dynamo.utils import counters

    return float(counters["stats"]["unique_graphs"])


def compile_layers(model: Any, device: torch.device) -> None:
    """torch.compile each decoder layer in place (one graph shared by the identical layers; after FSDP
    sharding, as FSDP2 expects). Checkpointing and LoRA stay as they are: the layer's forward is what
    is compiled and recomputed. KSA layers compile too: their masks are built before the layers run,
    the Triton kernels are opaque custom ops (ksa/triton_attention.py), and layers of one window share
    a graph."""
    if device.type == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        raise ModelLoadError("model.compile on the CPU needs a C++ compiler (install g++), or set model.compile: false")
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    # compile in this process: inductor's pool of forked compile workers once held a benchmark's exit
    # for its 300 s shutdown timeout on an H200 machine (set TORCHINDUCTOR_COMPILE_THREADS to override)
    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        from torch._inductor import config as inductor_config

        inductor_config.compile_threads = 1
    for layer in gdist.decoder_layers(model):
        layer.compile()


__all__ = ["Learner", "Sample", "load_policy", "ModelLoadError"]
