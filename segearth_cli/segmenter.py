"""The one door between the pipeline and the model.

The pipeline hands over square RGB canvases and questions and gets mask logits back; it
never sees the network inside. This module is the only one of ``segearth_cli`` that imports
``segearth_model``: loading a model by name, choosing its task, device and dtype, naming
what answered (``identity``), and the official canvas geometry the model was trained on.
torch is imported only when a model is loaded, so commands that never load one stay fast.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import ModelUnavailableError, UsageError

if TYPE_CHECKING:
    from .windows import Window

#: The official canvas geometry (long side to the model size, centre zero padding) lives with
#: the model, which was trained on it; the pipeline reaches it through these names, imported
#: on first use because the model package's preprocessing imports torch.
CANVAS_NAMES = ("PadInfo", "fitted_size", "resize_and_pad", "resize_mask_nearest")

log = logging.getLogger("segearth_cli.segmenter")

from segearth_model.names import TINY_RANDOM  # noqa: E402 - the built-in random network's name

TASKS = ("auto", "reasoning", "referring")


@runtime_checkable
class Segmenter(Protocol):
    #: Recorded in every output so a result can be traced to what produced it.
    name: str
    #: Side of the square input the segmenter expects, in pixels.
    input_size: int
    #: What answers, for records and reports: id, revision, dtype, task, numerics, device.
    identity: dict[str, Any]

    def segment(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        """``windows``: uint8 ``(B, 3, S, S)`` RGB, padding pixels 0.

        Returns float32 mask logits ``(B, M, S, S)``: every question asked of every window.
        """
        ...

    def segment_pairs(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        """One question per window (``len(questions) == B``): float32 logits ``(B, S, S)``."""
        ...


class FootprintSegmenter(Segmenter, Protocol):
    """A segmenter that also maps its answers back where it computes them (a GPU, say).

    The pipeline asks for this when a window's footprint is no larger than its canvas; a
    segmenter without it gets :func:`~segearth_cli.stitch.window_probabilities` on the host.
    """

    def segment_footprints(self, windows: np.ndarray, questions: Sequence[str],
                           footprints: Sequence["Window"]) -> list[np.ndarray]:
        """For each window, float32 probabilities ``(M, height, width)`` over its footprint.

        The official original-size rule: the logits cut to the window's destination
        rectangle, resized bilinearly (``align_corners=False``) to the footprint, then the
        sigmoid.
        """
        ...


class PixelFunctionSegmenter:
    """Logits computed pixel by pixel from the window's own values: a stand-in with a known answer.

    ``fn`` maps uint8 windows ``(B, 3, S, S)`` to logits ``(B, S, S)``; every question gets
    the same plane. A scene whose pixel values encode map coordinates lets a test predict
    the stitched answer at every pixel without running the pipeline.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], input_size: int = 1024, name: str = "pixel-function"):
        self.fn = fn
        self.input_size = int(input_size)
        self.name = name
        self.identity = {"id": name, "revision": "built-in"}

    def segment_pairs(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        plane = np.asarray(self.fn(windows), dtype=np.float32)
        expected = (windows.shape[0], self.input_size, self.input_size)
        if plane.shape != expected:
            raise ValueError(f"pixel function returned shape {plane.shape}, expected {expected}")
        return plane

    def segment(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        return np.repeat(self.segment_pairs(windows, questions)[:, None], len(questions), axis=1)


class ConstantSegmenter:
    """The same logit everywhere, at almost no cost: measures the pipeline without a model."""

    def __init__(self, value: float = 0.0, input_size: int = 1024, name: str = "constant"):
        self.value = float(value)
        self.input_size = int(input_size)
        self.name = name
        self.identity = {"id": name, "revision": "built-in"}
        self._plane = np.full((self.input_size, self.input_size), self.value, dtype=np.float32)

    def segment(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        # A read-only broadcast view: no per-call allocation of B x M planes.
        return np.broadcast_to(self._plane, (windows.shape[0], len(questions), self.input_size, self.input_size))

    def segment_pairs(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        return np.broadcast_to(self._plane, (windows.shape[0], self.input_size, self.input_size))


class ReplicatedSegmenter:
    """Copies of one segmenter on several devices, answering as one.

    The pipeline spreads batches over ``replicas`` (one thread each); a direct call goes to
    the first copy. Every copy must answer the same windows with the same logits.
    """

    def __init__(self, replicas: Sequence, identity: Optional[dict[str, Any]] = None):
        if not replicas:
            raise ValueError("at least one replica is needed")
        first = replicas[0]
        self.replicas = tuple(replicas)
        self.name = first.name
        self.input_size = int(first.input_size)
        self.identity = dict(identity or first.identity)

    def segment(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        return self.replicas[0].segment(windows, questions)

    def segment_pairs(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        return self.replicas[0].segment_pairs(windows, questions)


class ModelSegmenter:
    """Adapts ``segearth_model.MaskPredictor`` (torch in, torch out) to numpy.

    On a GPU the windows go through a page-locked staging buffer, so the copy to the device
    is asynchronous and the next batch can be assembled meanwhile. One thread at a time per
    instance: the buffer is reused by the next call.
    """

    def __init__(self, predictor, identity: Optional[dict[str, Any]] = None):
        self.predictor = predictor
        self.name = str(predictor.name)
        self.input_size = int(predictor.input_size)
        self.identity = dict(identity or {"id": self.name})
        self._staging = None

    def segment(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        return self._run(self.predictor.predict, windows, questions)

    def segment_footprints(self, windows: np.ndarray, questions: Sequence[str],
                           footprints: Sequence["Window"]) -> list[np.ndarray]:
        """See :class:`FootprintSegmenter`; on a GPU, resizing and the sigmoid run there.

        There they leave the host only the blend: a full window's sigmoid alone costs
        milliseconds of CPU, as much as the card's whole answer. On a CPU the host's own
        mapping is used: the same cores would do the work, and CPU answers stay bit for bit
        those of any other segmenter handing over logits.
        """
        from .stitch import probabilities_on_host

        if len(footprints) != len(windows):
            raise ValueError(f"{len(windows)} windows but {len(footprints)} footprints")
        if self.predictor.device.type == "cpu":
            return probabilities_on_host(self, windows, questions, footprints, self.input_size)
        import torch

        images = self._to_device(windows)
        with torch.inference_mode():
            logits = self.predictor.predict(images, list(questions), on_device=True)
            size = self.input_size
            if tuple(logits.shape) != (len(windows), len(questions), size, size):
                raise RuntimeError(f"segmenter {self.name} returned logits of shape {tuple(logits.shape)}, "
                                   f"expected {(len(windows), len(questions), size, size)}")
            return map_on_device(logits, footprints)

    def segment_pairs(self, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        if len(questions) != len(windows):
            raise ValueError(f"{len(windows)} windows but {len(questions)} questions")
        return self._run(self.predictor.predict_pairs, windows, questions)

    def _run(self, call, windows: np.ndarray, questions: Sequence[str]) -> np.ndarray:
        import torch

        images = self._to_device(windows)
        with torch.inference_mode():
            logits = call(images, list(questions))
        return logits.detach().to(device="cpu", dtype=torch.float32).numpy()

    def _to_device(self, windows: np.ndarray):
        import torch

        images = torch.from_numpy(np.ascontiguousarray(windows))
        device = self.predictor.device
        if device.type == "cuda":
            images = self._staged(images).to(device, non_blocking=True)
        return images

    def _staged(self, images):
        """``images`` copied into the page-locked buffer, grown to the largest batch seen.

        Safe to reuse at the next call: the logits' copy back to the host waited for the
        whole stream, this upload included.
        """
        staging = self._staging
        if staging is None or staging.shape[0] < images.shape[0] or staging.shape[1:] != images.shape[1:]:
            staging = self._staging = images.new_empty(images.shape).pin_memory()
        staged = staging[: images.shape[0]]
        staged.copy_(images)
        return staged


def map_on_device(logits, footprints: Sequence["Window"]) -> list[np.ndarray]:
    """Float32 probabilities over each window's footprint from canvas logits (B, M, S, S), a
    torch tensor on any device: :func:`~segearth_cli.stitch.window_probabilities` in torch."""
    import torch
    import torch.nn.functional as F

    answers = []
    for planes, window in zip(logits, footprints):
        rows, cols = window.dst_slices
        planes = planes[:, rows, cols].float()
        if not window.native:
            planes = F.interpolate(planes[None], size=(window.height, window.width), mode="bilinear",
                                   align_corners=False)[0]
        answers.append(torch.sigmoid(planes))
    return [answer.cpu().numpy() for answer in answers]


# --------------------------------------------------------------------------- the hub, without torch


def hub_cache_dir() -> Path:
    """Where hub models are cached (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the user's cache)."""
    from segearth_model.hub import hub_cache_dir as model_hub_cache_dir

    return model_hub_cache_dir()


def hub_offline() -> bool:
    """Whether the user asked for no hub access (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    from segearth_model.hub import hub_offline as model_hub_offline

    return model_hub_offline()


# --------------------------------------------------------------------------- choosing


def resolve_task(task: str, model: str) -> str:
    """``auto`` picks the template the release was trained with: referring for the RRSIS-D/RefSegRS releases."""
    task = task.lower()
    if task in ("reasoning", "referring"):
        return task
    if task != "auto":
        raise UsageError(f"--task {task}: choose auto, reasoning or referring")
    lowered = model.lower()
    return "referring" if ("rrsis" in lowered or "refsegrs" in lowered) else "reasoning"


def check_device_and_dtype(device: str, dtype: str) -> None:
    """Refuse a misspelt ``--device`` or ``--dtype`` before torch is imported (seconds) or a model loads."""
    from segearth_model.precision import check_device_spelling, check_dtype_spelling

    for option, value, check in (("--device", device, check_device_spelling), ("--dtype", dtype, check_dtype_spelling)):
        try:
            check(value)
        except ValueError as exc:
            raise UsageError(f"{option} {value}: {exc}") from None


def device_names(device: str) -> list[str]:
    """The torch devices ``--device`` resolves to, one per model copy; imports torch.

    ``cuda`` is every visible GPU, ``cuda:0,cuda:2`` those two.
    """
    from segearth_model.device import resolve_devices

    try:
        return [str(d) for d in resolve_devices(device)]
    except ValueError as exc:
        raise UsageError(f"--device {device}: {exc}") from None


def device_name(device: str) -> str:
    """The torch device ``--device`` resolves to (``auto``: cuda, then mps, then cpu); imports torch."""
    from segearth_model.device import resolve_device

    try:
        return str(resolve_device(device))
    except ValueError as exc:
        raise UsageError(f"--device {device}: {exc}") from None


def compute_dtype(device: str, dtype: str) -> str:
    """The precision (``float32``, ``bfloat16``, ``float16`` or ``mixed``) ``--device`` and ``--dtype`` resolve to.

    Imports torch: ``auto`` depends on the hardware. A combination that cannot run exits 2.
    float32 always runs the official numerics, whichever command asks for it.
    """
    from segearth_model.device import resolve_device, resolve_precision

    try:
        return resolve_precision(dtype, resolve_device(device))
    except ValueError as exc:
        raise UsageError(f"--device {device} --dtype {dtype}: {exc}") from None


@dataclass(frozen=True)
class ModelLimits:
    """What a model accepts, known from its configuration and tokenizer alone: no weights, no torch."""

    #: Side of the square model input, in pixels.
    input_size: int
    #: Most tokens a question may have after the prompt, the image and the tail.
    question_room: int
    #: Tokens of a question as the model will read them.
    count_tokens: Callable[[str], int]

    def check_questions(self, questions: Sequence[str]) -> None:
        """UsageError naming the first question longer than the model's context."""
        for number, question in enumerate(questions, start=1):
            tokens = self.count_tokens(question)
            if tokens > self.question_room:
                shown = question if len(question) <= 40 else question[:40] + "..."
                raise UsageError(f"question {number} {shown!r} is {tokens:,} tokens long; the model reads at most "
                                 f"{self.question_room:,} (shorten the question)")


def model_limits(model: str, revision: Optional[str] = None, task: str = "auto") -> ModelLimits:
    """The :class:`ModelLimits` of ``model``; a hub model is fetched as loading would (exit 4 if it cannot be)."""
    from segearth_model.config import SegEarthR1Config
    from segearth_model.prompt import question_room, special_token_ids, tokenize_prompt, tokenize_question

    from segearth_model import ModelLoadError

    directory = None
    try:
        if model == TINY_RANDOM:
            from segearth_model.tokenizer import build_tiny_tokenizer

            config, tokenizer = SegEarthR1Config.tiny(), build_tiny_tokenizer()
        else:
            from segearth_model.checkpoint_config import read_checkpoint_config
            from segearth_model.hub import resolve_checkpoint_dir
            from segearth_model.tokenizer import load_tokenizer

            directory = resolve_checkpoint_dir(model, revision)
            config, tokenizer = read_checkpoint_config(directory), load_tokenizer(directory)
        seg = special_token_ids(tokenizer).seg
    except (ModelLoadError, ValueError) as exc:
        message = str(exc)
        if directory is not None and str(directory) not in message:  # the tokenizer's complaints name no file
            message = f"{directory}: {message}"
        raise ModelUnavailableError(message) from exc
    room = question_room(config, tokenize_prompt(tokenizer, resolve_task(task, model)))
    if room < 1:
        where = f"{directory}/config.json" if directory is not None else model
        raise ModelUnavailableError(f"{where}: max_position_embeddings {config.language.max_position_embeddings} "
                                    f"leaves no room for a question after the prompt and the image")
    return ModelLimits(int(config.image_size), room, lambda question: len(tokenize_question(tokenizer, question, seg)))


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(folder).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "files:" + digest.hexdigest()[:16]


def model_identity(
    model: str, revision: Optional[str] = None, *, dtype: Any = None, task: Optional[str] = None
) -> dict[str, Any]:
    """Which weights will answer: the id as given and the revision actually used.

    For a hub model the revision is the commit hash of the snapshot that ``revision``
    (default: the main branch) resolves to, downloading it when online exactly as loading
    would; so "main" moving to a new commit counts as a change, and loading with this
    commit uses the same files. For a local directory it is a fingerprint of its files'
    names, sizes and mtimes; for the built-in tiny-random network, ``built-in`` (its
    weights are a function of the tool version, which the record holds anyway). ``dtype``
    is the resolved compute dtype (results differ between float32 and bfloat16) and
    ``task`` the prompt template; both are recorded when given.
    """
    identity: dict[str, Any] = {"id": model}
    local = Path(model).expanduser()
    if model == TINY_RANDOM:
        identity["revision"] = "built-in"
    elif local.is_dir():
        folder = local.resolve()
        identity["id"] = str(folder)
        identity["revision"] = _folder_fingerprint(folder)
    else:
        from segearth_model.hub import resolve_checkpoint_dir

        from segearth_model import ModelLoadError

        try:
            snapshot = resolve_checkpoint_dir(model, revision)
        except ModelLoadError as exc:
            raise ModelUnavailableError(str(exc)) from exc
        identity["revision"] = snapshot.name  # hub snapshot folders are named by commit hash
    if dtype is not None:
        identity["dtype"] = str(dtype).replace("torch.", "")
    if task is not None:
        identity["task"] = task
    return identity


def pinned_revision(model: str, revision: Optional[str], identity: dict[str, Any]) -> Optional[str]:
    """The revision to load so that the weights are the very commit ``identity`` names."""
    if model == TINY_RANDOM or Path(model).expanduser().is_dir():
        return revision
    return identity["revision"]


# --------------------------------------------------------------------------- loading


def _head_cache(network: Any):
    """The on-disk cache of the shared prompt head, unless ``SEGEARTH_CACHE_DIR`` turns it off."""
    from segearth_model.prompt_cache import PromptHeadCache, default_cache_dir

    directory = default_cache_dir()
    if directory is None or network.weights_fingerprint is None:
        return None
    return PromptHeadCache(directory, network.weights_fingerprint)


def load_segmenter(model: str, *, revision: Optional[str], device: str, dtype: str, task: str, quiet: bool,
                   identity: Optional[dict[str, Any]] = None):
    """Load the model behind the Segmenter interface; unavailable models exit 4 with a way out.

    In float32 the model runs the official numerics (the weight rounding of the paper's
    evaluation, see ``segearth_model.load_pretrained``). ``identity``, when the caller already resolved it
    (a batch pins the revision before loading), is what the segmenter reports. A ``device``
    naming several GPUs gives a :class:`ReplicatedSegmenter` with one copy on each.
    """
    devices = device_names(device)
    if model == TINY_RANDOM:
        log.warning("model 'tiny-random' has random weights: its answers are meaningless "
                    "(use it to try the pipeline, not to read the result)")
    elif not quiet:
        log.info("loading model %s%s", model, f" at {revision}" if revision else "")
    replicas = [_load_one(model, revision=revision, device=name, dtype=dtype, task=task, identity=identity)
                for name in devices]
    if len(replicas) == 1:
        return replicas[0]
    return ReplicatedSegmenter(replicas, {**replicas[0].identity, "device": ",".join(devices)})


def _load_one(model: str, *, revision: Optional[str], device: str, dtype: str, task: str,
              identity: Optional[dict[str, Any]]) -> ModelSegmenter:
    task = resolve_task(task, model)
    precision = compute_dtype(device, dtype)

    import segearth_model

    try:
        network, tokenizer = segearth_model.load_pretrained(model, revision=revision, device=device, dtype=precision)
    except segearth_model.ModelLoadError as exc:
        # The model package's messages already name the repo or file and how to get it.
        raise ModelUnavailableError(str(exc)) from exc
    predictor = segearth_model.MaskPredictor(network, tokenizer, task=task, name=model, head_cache=_head_cache(network))
    described = dict(identity or {"id": model, "revision": revision or ("built-in" if model == TINY_RANDOM else None)})
    described.update(dtype=precision, task=task, numerics="official" if network.official_numerics else "native",
                     device=str(predictor.device))
    return ModelSegmenter(predictor, described)


def __getattr__(name: str) -> Any:
    if name in CANVAS_NAMES:
        from segearth_model import preprocess

        return getattr(preprocess, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
