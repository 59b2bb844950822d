"""The learner: one policy (+ optional reference) that turns scored samples into an optimizer step.

train_step(samples):
  1. pack prompt+response sequences into token-budget micro-batches (golong.packing), the samples of
     one GRPO group (Sample.group_id) behind one copy of their prompt;
  2. old log-probs: with one optimizer step per batch they come from the same forward (ratio = 1,
     the on-policy case); with several (updates_per_batch passes x mini_batches), from one no-grad
     pass before the first step. Dropout is off in both (the sampler has none, and the first
     step's ratio must be exactly 1);
  3. reference log-probs (only if algo.kl_coef > 0): a frozen copy of the initial weights, or for
     LoRA the same model with the adapter disabled;
  4. the recipe's policy loss (golong.algos, by name: algo.policy_loss, PPO clip-higher + dual clip by
     default; optionally weighted by rollout IS) with gradient accumulation in float32, each
     micro-batch's loss normalised by the *whole mini-batch's* token (or sequence) count, so the
     accumulated gradient is that of the mini-batch aggregate;
  5. grad-norm clip, AdamW step, linear warm-up then constant learning rate.

With several learner ranks (torch.distributed initialised, see golong.distributed) the model and the
reference are sharded with FSDP2, every rank gets the same batch and trains on its token-balanced
share, and the counts of step 4 are summed over ranks, so the update equals one process's. One
process holds a LocalContext whose collectives are identities, so the step reads the same for both.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import time
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from golong import distributed as gdist
from golong.algos import aggregate, check_policy_loss, compute_policy_loss, kl_penalty, rollout_is_weights
from golong.config import AlgoConfig, ModelConfig, OptimConfig
from golong.models import compile_layers, compiled_graphs, load_policy, prepare_policy
from golong.packing import (
    PackedRow,
    bucket_length,
    ksa_layout_padding,
    lays_out_every_row,
    pack,
    pack_shared,
    pad_stack,
    plan_micro_batches,
    plan_shared_micro_batches,
    row_logprobs,
    shared_attention,
    shared_kernel,
    supports_prompt_sharing,
    uses_ksa_layout,
)
from golong.precision import precision
from ksa.flex_attention import set_compile_mode as set_flex_compile_mode


@dataclass
class Sample:
    """One response to train on."""

    prompt_ids: list[int]
    response_ids: list[int]
    advantage: float
    sampler_logprobs: list[float] | None = None  # from the rollout engine: drift metrics, rollout IS
    reward_type: str = ""  # the prompt's reward type (EM, F1, ...): the key advantages pool by
    sampled: bool = True  # drawn from the rollout engine (False: a reference answer; no rollout IS)
    group_id: Hashable | None = None  # its GRPO group (the samples of one prompt); None: a group of its own


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Learner:
    def __init__(
        self,
        model: ModelConfig,
        optim: OptimConfig,
        algo: AlgoConfig,
        *,
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
        check_policy_loss(algo.policy_loss)
        torch.manual_seed(seed)
        random.seed(seed)
        self.model_cfg, self.optim_cfg, self.algo_cfg = model, optim, algo
        self.temperature = temperature
        self.device = torch.device(device) if device else _default_device()
        # several learner ranks (torch.distributed initialised, see golong.distributed): FSDP2 over them
        dist = gdist.current_context()
        self.sharded = dist is not None
        if self.sharded and model.lora is not None:
            raise ValueError("LoRA with several learner ranks is not supported yet; use one learner rank (cluster.learner_gpus=1)")
        if self.sharded and device is None:
            self.device = dist.device
        self.dist: gdist.RankContext = dist or gdist.LocalContext(self.device)
        self.is_lora = model.lora is not None
        self.precision = precision(model, optim, sharded=self.sharded)
        self._model, self._tokenizer = self._load(model.model_copy(update={"dtype": self.precision.load_dtype}), policy)
        self._ref = None
        if algo.kl_coef > 0 and not self.is_lora:
            # the reference computes exactly as the policy's forward does (under autocast: float32
            # weights, bf16 matmuls), so the step-0 KL is exactly 0
            self._ref = copy.deepcopy(self._model).eval().requires_grad_(False)
            if self.precision.fsdp_bf16:
                self._ref.to(torch.bfloat16)
        # model -> its FSDP root (whose forward gives the packed log-probs); empty for one rank
        self._roots: dict[int, Any] = {}
        if self.sharded:
            self._roots[id(self._model)] = gdist.shard(self._model, self.dist, bf16_compute=self.precision.fsdp_bf16)
            if self._ref is not None:
                self._roots[id(self._ref)] = gdist.shard(self._ref, self.dist)
        if model.compile:
            compile_layers(self._model, self.device)
        set_flex_compile_mode("max-autotune-no-cudagraphs" if optim.flex_autotune and self.device.type == "cuda" else None)
        self._build_optimizer(optim)
        self.step = 0

    def _load(self, cfg: ModelConfig, policy: tuple[Any, Any] | None) -> tuple[Any, Any]:
        """(model, tokenizer): model.path loaded, or the given `policy` prepared, in `cfg.dtype`."""
        if policy is None:
            return load_policy(cfg, device=self.device)
        built, tokenizer = policy
        built.to(torch.float32 if cfg.dtype == "float32" else torch.bfloat16)
        return prepare_policy(built, cfg, device=self.device), tokenizer

    def _build_optimizer(self, optim: OptimConfig) -> None:
        """AdamW over the trainable parameters (or their float32 copies) and the warm-up schedule."""
        params = [p for p in self._model.parameters() if p.requires_grad]
        # (bf16 parameter, its float32 master copy): the optimizer steps the copies
        self._masters = [(p, p.detach().float().clone()) for p in params] if self.precision.optimizer_master else []
        if self._masters:
            params = [m for _, m in self._masters]
        # low-precision parameters whose micro-batch gradients are summed in float32 (`_accumulate_grads`)
        self._lowp = [p for p, _ in self._masters] if self._masters else (
            [p for p in params if p.dtype != torch.float32] if not self.sharded else [])
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
        self._graphs_before = compiled_graphs()  # the metric counts this learner's graphs, not the process's

    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def autocast(self) -> bool:
        return self.precision.autocast

    # ------------------------------------------------------------ forward helpers

    def _rows(self, samples: list[Sample]) -> list[tuple[list[int], PackedRow]]:
        """Micro-batches as (sample indices, packed row): with share_prompts, the samples of one GRPO
        group behind a single copy of their prompt; otherwise each (prompt, response) packed on its own."""
        budget = self.optim_cfg.micro_batch_tokens
        if self.optim_cfg.share_prompts and supports_prompt_sharing(self._model):
            groups = _groups(samples)
            if len(groups) < len(samples):
                return self._shared_rows(samples, groups, budget)
        lengths = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
        bins = plan_micro_batches(lengths, budget)
        rows = [(b, pack([samples[i].prompt_ids for i in b], [samples[i].response_ids for i in b])) for b in bins]
        if lays_out_every_row(self._model):  # a KSA model lays these out too: padded on its layout
            for _, row in rows:
                row.layout_padding = ksa_layout_padding(self._model, row)
        return rows

    def _shared_rows(self, samples: list[Sample], groups: list[list[int]], budget: int) -> list[tuple[list[int], PackedRow]]:
        prompts = [samples[g[0]].prompt_ids for g in groups]
        members = [[(i, len(samples[i].response_ids)) for i in g] for g in groups]
        rows, ksa_layout = [], uses_ksa_layout(self._model)
        for units in plan_shared_micro_batches([len(p) for p in prompts], members, budget):
            size = sum(len(samples[u[0]].prompt_ids) + sum(len(samples[i].response_ids) for i in u) for u in units)
            # padded to a bucket length: compiled attention and layers see a few shapes, not one per row
            # (a KSA row on its own layout: text and summary slots padded there, by the model)
            row = pack_shared([(samples[u[0]].prompt_ids, [samples[i].response_ids for i in u]) for u in units],
                              pad_to=None if ksa_layout else bucket_length(size))
            if ksa_layout:
                row.layout_padding = ksa_layout_padding(self._model, row)
            else:
                row.kernel = shared_kernel(self.optim_cfg.shared_prompt_kernel,
                                           [len(samples[i].response_ids) for u in units for i in u])
            rows.append(([i for u in units for i in u], row))
        return rows

    def _forward(self, model, row: PackedRow) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-sequence log-probs and entropies of one row; the caller holds `shared_attention(model, row)`."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision.autocast):
            root = self._roots.get(id(model))
            if root is not None:
                return root.logprobs(row, self.optim_cfg.logprob_chunk, self.temperature)
            return row_logprobs(model, row, chunk=self.optim_cfg.logprob_chunk, temperature=self.temperature)

    def _logprobs(self, model, row: PackedRow) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`_forward` under the row's attention (for a forward with no backward to follow)."""
        with shared_attention(model, row):
            return self._forward(model, row)

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
                    _add(sums, part)
                    if update == 0:
                        # tokens through the model (shared prompts once), counted over the first pass
                        _add(sums, {"packed_tokens": float(row.input_ids.shape[1] - row.padding),
                                    "pad_tokens": float(row.padding + row.layout_padding)})
                        for i, lp in zip(idx, old[k][r] if old else logps, strict=True):
                            learner_lps[id(plan.samples[i])] = lp
                steps.append({**self.dist.sum_dicts(sums), "grad_norm": self._optimizer_step()})
        metrics = {name: sum(st.get(name, 0.0) for st in steps) / len(steps) for name in steps[0]}
        for name in ("packed_tokens", "pad_tokens"):
            metrics[name] = sum(st.get(name, 0.0) for st in steps)
        metrics.update(optimizer_steps=float(len(steps)), lr=self.scheduler.get_last_lr()[0])
        self.scheduler.step()
        self.step += 1
        mine = [s for p in plans for s in p.samples]
        metrics.update(sampler_drift(mine, [learner_lps.get(id(s)) for s in mine], self.dist))
        elapsed = time.perf_counter() - t0
        metrics.update(tokens=float(sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)),
                       response_tokens=float(sum(len(s.response_ids) for s in samples)), learner_time_s=elapsed)
        metrics["tokens_per_s"] = metrics["tokens"] / max(elapsed, 1e-9)
        metrics["compiled_graphs"] = compiled_graphs() - self._graphs_before
        return metrics

    def _plan(self, mini_batch: list[Sample]) -> _MiniBatch:
        """This rank's packed rows of one mini-batch and the mini-batch's (all ranks') loss denominators."""
        # this rank's share, padded with idle rows to the busiest rank's count; the denominators stay
        # the whole mini-batch's
        mine = [mini_batch[i] for i in self.dist.my_share([len(s.prompt_ids) + len(s.response_ids) for s in mini_batch])]
        rows = gdist.pad_rows(self._rows(mine), self.dist)
        tokens = sum(len(s.response_ids) for s in mini_batch)
        total = tokens if self.algo_cfg.loss_agg == "token-mean" else sum(1 for s in mini_batch if s.response_ids)
        return _MiniBatch(mine, rows, total, tokens)

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
            logps, ents = self._forward(self._model, row)
            detached = [lp.detach() for lp in logps]
            lp, mask = pad_stack(logps)
            olp, _ = pad_stack(old if old is not None else detached)  # one step: old = current, ratio 1
            adv = torch.tensor([s.advantage for s in samples], dtype=torch.float32, device=lp.device)
            weights, is_metrics = self._is_weights(samples, old if old is not None else detached, olp, mask)
            pg, pm = compute_policy_loss(algo.policy_loss, lp, olp, adv, mask, agg=algo.loss_agg, total=total,
                                         norm_len=algo.loss_norm_tokens, is_weights=weights, config=algo)
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
                                  clip=tuple(algo.rollout_is_clip), mode=algo.rollout_is_mode, veto=algo.rollout_is_veto)

    def _idle_micro_batch(self, row: PackedRow) -> None:
        """Forward + backward with a zero loss: keeps this rank in step with the others' FSDP collectives."""
        logps, _ = self._forward(self._model, row)  # an idle row is never a shared-prompt row
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

    # ------------------------------------------------------------ weights for the rollout engine

    @torch.no_grad()
    def state_dict_for_sync(self) -> dict[str, torch.Tensor]:
        """Full weights named as in the base HF model, in model.dtype; for LoRA the adapters are merged in (W + s B A)."""
        dtype = torch.bfloat16 if self.model_cfg.dtype == "bfloat16" else torch.float32

        def cast(v: torch.Tensor) -> torch.Tensor:
            return v.detach().to(dtype) if v.is_floating_point() else v.detach()

        if self.sharded:  # collective: every rank calls; rank 0 gets the weights (CPU), others {}
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

    # ------------------------------------------------------------ checkpoints

    def save(self, path: str | Path) -> Path:
        """Atomically write model (or adapter) + tokenizer + optimizer/scheduler state to `path`.

        No RNG state: the learner draws no random numbers after it is built (dropout is off); a run's
        RNG state is saved once, by golong.checkpoint."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        if self.sharded:  # collective: the full state gathered to rank 0, which writes
            return self._save_sharded(path, tmp)
        tmp.mkdir(parents=True)
        self._model.save_pretrained(tmp / "model")
        self._tokenizer.save_pretrained(tmp / "model")
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "master_weights": [m for _, m in self._masters],
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
        """`save` over several ranks: model (HF layout), tokenizer and the full optimizer state gathered to
        rank 0 (CPU) and written there."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self._model, options=opts)
        optim = get_optimizer_state_dict(self._model, self.optimizer, options=opts)
        if self.dist.rank == 0:
            tmp.mkdir(parents=True)
            self._model.save_pretrained(tmp / "model", state_dict=weights)
            self._tokenizer.save_pretrained(tmp / "model")
            torch.save({"optimizer": optim, "sharded": True}, tmp / "optimizer.pt")
            torch.save({"scheduler": self.scheduler.state_dict(), "step": self.step, "master_weights": []},
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

        weights: dict[str, torch.Tensor] = {}
        for f in sorted((path / "model").glob("*.safetensors")):
            weights.update(load_file(str(f)))
        if self.is_lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self._model, weights)
        elif self.sharded:
            self._load_sharded(path, weights)
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
        if not self.sharded:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]

    def _load_sharded(self, path: Path, weights: dict[str, torch.Tensor]) -> None:
        """`load` over several ranks: every rank reads the full weights and optimizer state and keeps its shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(self._model, weights, options=opts)
        optim = torch.load(path / "optimizer.pt", weights_only=True)["optimizer"]  # plain data only
        set_optimizer_state_dict(self._model, self.optimizer, optim, options=opts)

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


def _groups(samples: list[Sample]) -> list[list[int]]:
    """Sample indices of each GRPO group, in order of first appearance; a sample without a group id is a
    group of its own. A group's samples share one prompt (it is packed once for all of them)."""
    out: list[list[int]] = []
    where: dict[Hashable, int] = {}
    for i, s in enumerate(samples):
        if s.group_id is None:
            out.append([i])
            continue
        if s.group_id not in where:
            where[s.group_id] = len(out)
            out.append([])
        members = out[where[s.group_id]]
        first = samples[members[0]].prompt_ids if members else s.prompt_ids
        if first is not s.prompt_ids and first != s.prompt_ids:
            raise ValueError(f"group {s.group_id!r} holds samples of different prompts")
        members.append(i)
    return out


def _add(sums: dict[str, float], part: dict[str, float]) -> None:
    for name, v in part.items():
        sums[name] = sums.get(name, 0.0) + v


def sampler_drift(samples: list[Sample], learner_lps: list[torch.Tensor | None], ctx: gdist.RankContext) -> dict[str, float]:
    """Sampler-vs-learner log-prob drift over the response tokens of every rank: mean |diff| and mean
    k3 KL(sampler || learner). Samples without sampler log-probs (or learner ones) are left out; no
    such token anywhere gives {}."""
    diffs, kls = [torch.zeros(0)], [torch.zeros(0)]
    for s, lp in zip(samples, learner_lps, strict=True):
        if s.sampler_logprobs is None or lp is None or not len(s.sampler_logprobs):
            continue
        if len(s.sampler_logprobs) != lp.numel():
            raise ValueError(f"sample has {len(s.sampler_logprobs)} sampler logprobs for {lp.numel()} response tokens")
        sp, lp = torch.tensor(s.sampler_logprobs, dtype=torch.float32), lp.float().cpu()
        diffs.append((sp - lp).abs())
        kls.append(kl_penalty(sp, lp, "k3"))
    d, k = torch.cat(diffs), torch.cat(kls)
    s_abs, s_kl, n = ctx.all_sum([float(d.sum()), float(k.sum()), d.numel()])
    if not n:
        return {}
    # divided in float32: on one rank exactly the float32 mean of the tokens
    drift, drift_kl = (torch.tensor([s_abs, s_kl], dtype=torch.float32) / n).tolist()
    return {"drift": drift, "drift_kl": drift_kl}


__all__ = ["Learner", "Sample", "sampler_drift"]
