"""What runs in one worker process: models and method state loaded once, batches in, rows out.

The executors only decide *where* a worker runs (this process, or a Ray actor per GPU/CPU slot);
everything a worker does with a batch is here, so both executors give byte-identical results.
"""
from __future__ import annotations

import math
import platform
import threading
import time
from dataclasses import replace
from typing import Any, Literal

import torch

from harness.config import RunConfig
from harness.log import get_logger, quiet_libraries, setup
from harness.schema import to_dict
from harness.store import RunStore, UnitRow
from harness.suites import load_suite, select_items
from harness.units import Batch, PrepareJob, Retry, resolve_methods

log = get_logger("worker")


def choose_device() -> str:
    # From torch, never from Ray's assignment: Ray sets CUDA_VISIBLE_DEVICES even for fake GPUs.
    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_dtype(precision: str, device: str) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def to_uint8(image: torch.Tensor) -> Any:
    """Float (3, H, W) in [0, 1] -> uint8 (H, W, 3), rounding as diffusers' numpy_to_pil does."""
    return (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class Worker:
    def __init__(self, config: RunConfig, run_dir: str, worker_id: str = "w0") -> None:
        # Set explicitly: reused Ray workers keep the count torch read at import, and CPU results
        # depend on it (see ExecutorConfig.threads).
        torch.set_num_threads(config.executor.threads)
        setup()  # a Ray worker is a fresh process: harness messages on, library chatter off
        self.config = config
        self.store = RunStore(run_dir)
        self.worker_id = worker_id
        self.device = choose_device()
        self.dtype = choose_dtype(config.executor.precision, self.device)
        self.methods = {m.label: m for m in resolve_methods(config)}
        self.suites = {name: select_items(load_suite(name), config.items) for name in config.suites}
        self._backbones: dict[str, Any] = {}
        self._states: dict[str, dict[str, Any]] = {}
        # One job on the device at a time. Image encoding and writing happen outside it, so a Ray actor
        # running two jobs (ExecutorConfig.jobs_per_worker) writes one batch's PNGs while the next computes.
        self._device_lock = threading.Lock()

    @property
    def device_name(self) -> str:
        if self.device == "cuda":
            return torch.cuda.get_device_name()
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    def backbone(self, model: str) -> Any:
        if model not in self._backbones:
            from harness.models import load_backbone

            backbone = load_backbone(model, self.device, self.dtype)
            quiet_libraries()  # diffusers is loaded now: its per-model notices off
            if self.config.executor.compile:
                from harness.diffusion.compile import compile_backbone

                compile_backbone(backbone)
            self._backbones[model] = backbone
        return self._backbones[model]

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    # -- jobs ---------------------------------------------------------------------------------
    def prepare(self, job: PrepareJob) -> dict[str, Any]:
        """Run a method's one-off preparation unless its artifact already exists."""
        with self._device_lock:
            return self._prepare(job)

    def _prepare(self, job: PrepareJob) -> dict[str, Any]:
        if self.store.artifact_path(job.key).is_file():
            return {"key": job.key, "skipped": True}
        from harness.method_api import PrepareContext

        method = self.methods[job.method]
        backbone = self.backbone(job.model)
        ctx = PrepareContext(suite=self.suites[job.suite], sampler=self.config.sampler, seed=job.seed)
        error_path = self.store.artifact_path(job.key).with_suffix(".error")
        error_path.unlink(missing_ok=True)
        try:
            self._sync()
            start = time.perf_counter()
            state = method.cls(method.options).prepare(backbone, ctx)
            self._sync()
        except Exception as exc:  # its batches fail with this reason; `harness run --retry-failed` tries again
            error = f"prepare of {job.method} on {job.model}/{job.suite} failed: {type(exc).__name__}: {exc}"
            log.debug(error, exc_info=True)  # the driver reports the failure itself, once
            from harness.store import atomic_write_bytes

            atomic_write_bytes(error_path, error.encode())
            return {"key": job.key, "error": error}
        seconds = time.perf_counter() - start
        self.store.save_artifact(job.key, {"state": state, "seconds": seconds, "device": self.device_name})
        return {"key": job.key, "skipped": False, "seconds": seconds}

    def metrics_shard(self, shard: Any) -> int:
        from harness.evaluation import compute_shard

        with self._device_lock:
            return compute_shard(shard)

    def _state(self, key: str, needed: bool) -> tuple[dict[str, Any], float]:
        if not needed:
            return {}, 0.0
        if key not in self._states:
            artifact = self.store.load_artifact(key)
            if artifact is None:
                error_path = self.store.artifact_path(key).with_suffix(".error")
                if error_path.is_file():
                    raise RuntimeError(error_path.read_text())
                raise RuntimeError(f"artifact {key} missing: the prepare stage did not run")
            self._states[key] = artifact
        art = self._states[key]
        return art["state"], float(art["seconds"])

    def _real_image_start(self, backbone: Any, item: Any, transform: Literal["center-crop", "resize"]
                          ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """x_T of a real image by DDIM inversion (η = 0) with its caption, cached by image hash, model and schedule;
        the image's own state x_0 (one encoder pass, not cached); and the row fields: input_path, and the
        inversion's time and cache key (paid once per image, whichever unit ran it first; the runtime summary
        counts each key once).
        """
        from harness.diffusion import Schedule, ddim_invert, make_condition
        from harness.hashing import stable_hash
        from harness.images import load_image

        image, sha = load_image(item.image, backbone.resolution, transform)
        input_path = f"images/inputs/{sha[:16]}.png"
        if not (self.store.root / input_path).is_file():
            self.store.write_image(input_path, to_uint8(image))
        sampler = self.config.sampler
        key = "inversion-" + stable_hash("inversion", backbone.fingerprint, sha, transform, item.prompt,
                                         sampler.num_steps)
        x0 = backbone.encode(image[None].to(backbone.device))
        cached = self.store.load_artifact(key)
        if cached is None:
            # Guidance 1 (the caption alone) for inversion, as is standard: CFG breaks the ODE's reversibility.
            self._sync()
            start = time.perf_counter()
            cond = make_condition(backbone, [item.prompt], 1.0)
            x_T = ddim_invert(backbone, x0, Schedule.from_backbone(backbone, sampler.num_steps), cond).cpu()
            cached = {"x_T": x_T, "seconds": time.perf_counter() - start}
            self.store.save_artifact(key, cached)
        # Artifacts written before the time was recorded have none: NaN, not a made-up 0.
        fields = {"input_path": input_path, "inversion_key": key,
                  "inversion_seconds": float(cached.get("seconds", math.nan))}
        return cached["x_T"][0], x0[0].cpu(), fields

    def _input_error(self, backbone: Any, item: Any) -> str | None:
        if backbone.family != "text":
            return None
        for field in ("prompt", "target_prompt"):
            text = getattr(item, field)
            if field == "prompt" and not text.strip():
                return f"empty prompt in item {item.id!r}"
            if text and backbone.prompt_too_long(text):
                return f"{field} of item {item.id!r} is longer than the text encoder's {backbone.tokenizer.model_max_length} tokens"
        return None

    def run_batch(self, job: Batch | Retry) -> list[UnitRow]:
        """Edit a batch, write its images, then its shard (which marks it done); return the rows written.

        Never raises for a method error. A Retry computes its whole batch but writes only its units'
        images and rows (replacing their failed rows in the shard)."""
        batch, redo = (job.batch, job.unit_keys) if isinstance(job, Retry) else (job, None)
        with self._device_lock:
            started = time.time()  # busy from here: time spent waiting for the lock is not work
            rows, images = self._compute_batch(batch)
        chosen = [rows[u.key] for u in batch.units if redo is None or u.key in redo]
        paths = {path for row in chosen for path in (row.original_path, row.edited_path)}
        for path, image in images:
            if path in paths:
                self.store.write_image(path, image)
        finished = time.time()
        out = [replace(row, batch_started_at=started, batch_finished_at=finished) for row in chosen]
        if redo is None:
            self.store.write_shard(batch.key, out)
        else:
            self.store.update_shard(batch.key, out)
        return out

    def _compute_batch(self, batch: Batch) -> tuple[dict[str, UnitRow], list[tuple[str, Any]]]:
        """Rows by unit key, and the (path, uint8 image) pairs still to be written."""
        from harness.method_api import EditRequest

        method = self.methods[batch.method]
        suite = self.suites[batch.suite]
        rows: dict[str, UnitRow] = {}
        requests = []
        backbone = None
        try:
            backbone = self.backbone(batch.model)
            state, prep_seconds = self._state(batch.prepare_key, method.cls.needs_prepare)
        except Exception as exc:  # a model or artifact that cannot load fails its units, with the reason
            state, prep_seconds = {}, 0.0
            load_error: str | None = f"{type(exc).__name__}: {exc}"
        else:
            load_error = None
        for unit in batch.units:
            item = suite.item(unit.item_id)
            rows[unit.key] = self._row(batch, unit, item, method, prep_seconds)
            error = load_error or self._input_error(backbone, item)
            x_T = x_0 = None
            if not error and item.image:
                try:
                    x_T, x_0, fields = self._real_image_start(backbone, item, suite.image_transform)
                    rows[unit.key] = replace(rows[unit.key], **fields)
                except Exception as exc:  # unreadable or wrongly sized files fail their unit only
                    error = f"{type(exc).__name__}: {exc}"
            if error:
                rows[unit.key] = replace(rows[unit.key], status="failed", error=error)
            else:
                requests.append(EditRequest(unit.key, item, unit.strength, unit.noise_seed, x_T, x_0))
        images = self._edit(batch, method, backbone, state, requests, rows) if requests else []
        return rows, images

    def _edit(self, batch: Batch, method: Any, backbone: Any, state: dict, requests: list,
              rows: dict[str, UnitRow]) -> list[tuple[str, Any]]:
        """Run the method on the requests; completes their rows in `rows` (replaced: rows are frozen)."""
        results = self._attempt(batch, method.cls(method.options), backbone, state, requests)
        images = []
        for request in requests:
            row = rows[request.unit_key]
            output, error, seconds, note, compile_s = results[request.unit_key]
            if output is None:
                rows[request.unit_key] = replace(row, status="failed", error=error)
                continue
            if not (torch.isfinite(output.edited).all() and torch.isfinite(output.original).all()):
                rows[request.unit_key] = replace(
                    row, status="failed", error="non-finite values (NaN/inf) in the method's output image")
                continue
            images += [(row.original_path, to_uint8(output.original)), (row.edited_path, to_uint8(output.edited))]
            info = dict(output.info, **({"recovery": note} if note else {}))
            rows[request.unit_key] = replace(row, status="done", edit_seconds=seconds, compile_seconds=compile_s,
                                             info=_info_json(info))
        return images

    def _attempt(self, batch: Batch, instance: Any, backbone: Any, state: dict, requests: list,
                 note: str = "") -> dict[str, tuple[Any, str | None, float, str, float]]:
        """Edit with bounded retries; out-of-memory halves the batch; a persistent failure is isolated per unit.

        Returns unit_key -> (output or None, error, seconds per image, recovery note, compile seconds per image).
        With executor.compile, the calls that compiled a new shape are timed apart (CompileTimer) and taken out
        of the edit time, so the first batch of each shape is not charged for the compiler.
        """
        from harness import faults
        from harness.diffusion.compile import compile_seconds

        attempts = self.config.executor.max_retries + 1
        error = ""
        for attempt in range(attempts):
            try:
                faults.before_edit([r.unit_key for r in requests], self.store.root)
                self._sync()
                compiled_before = compile_seconds(backbone)
                start = time.perf_counter()
                outputs = instance.edit(backbone, state, requests, self.config.sampler)
                self._sync()
                compile_s = compile_seconds(backbone) - compiled_before
                seconds = (time.perf_counter() - start - compile_s) / len(requests)
                if len(outputs) != len(requests):
                    raise RuntimeError(f"method returned {len(outputs)} outputs for {len(requests)} requests")
                return {r.unit_key: (o, None, seconds, note, compile_s / len(requests))
                        for r, o in zip(requests, outputs)}
            except torch.OutOfMemoryError as exc:
                if self.device == "cuda":
                    torch.cuda.empty_cache()
                if len(requests) > 1:
                    half = len(requests) // 2
                    log.warning("out of memory on %d units of batch %s; retrying as %d + %d", len(requests),
                                batch.key, half, len(requests) - half)
                    tag = f"out-of-memory: batch split to {half}"
                    return {**self._attempt(batch, instance, backbone, state, requests[:half], tag),
                            **self._attempt(batch, instance, backbone, state, requests[half:], tag)}
                error = f"OutOfMemoryError at batch size 1: {exc}"
                break
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.info("%s batch %s (%d units) attempt %d/%d failed: %s", batch.method, batch.key, len(requests),
                         attempt + 1, attempts, error)
                log.debug("traceback", exc_info=True)
        if len(requests) > 1:
            # Find the unit(s) at fault instead of failing the whole batch.
            out: dict[str, tuple[Any, str | None, float, str, float]] = {}
            for r in requests:
                out.update(self._attempt(batch, instance, backbone, state, [r], "isolated after batch failure"))
            return out
        return {requests[0].unit_key: (None, error, math.nan, note, 0.0)}

    def _row(self, batch: Batch, unit: Any, item: Any, method: Any, prep_seconds: float) -> UnitRow:
        return unit_row(self.config, batch, unit, item, method, prep_seconds, self.device_name, self.worker_id)


def unit_row(config: RunConfig, batch: Batch, unit: Any, item: Any, method: Any, prep_seconds: float,
             device: str, worker: str) -> UnitRow:
    """A unit's row, status "failed" until the edit succeeds (so no unit is ever missing a reason)."""
    import json

    base = f"images/{batch.method}/{unit.key}"
    return UnitRow(
        run_id=config.run_id, unit_key=unit.key, batch_key=batch.key, method=unit.method,
        method_name=method.cls.name, method_version=method.cls.version,
        options=json.dumps(to_dict(method.options), sort_keys=True), model=unit.model, suite=unit.suite,
        item_id=unit.item_id, attribute=unit.attribute, prompt=item.prompt, target_prompt=item.target_prompt,
        strength=unit.strength, seed=unit.seed, noise_seed=str(unit.noise_seed),
        original_path=f"{base}.orig.png", edited_path=f"{base}.edit.png",
        prepare_seconds=prep_seconds, prepare_key=batch.prepare_key, device=device, worker=worker,
    )


def _info_json(info: dict[str, Any]) -> str | None:
    import json

    if not info:
        return None
    return json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in info.items()}, sort_keys=True)
