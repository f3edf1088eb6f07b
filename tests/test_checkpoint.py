"""Checkpoint conversion, loading and writing in the released key layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conformance import conformance_file, write_fixture_checkpoint
from release_layout import save_release_layout
from segearth_model.build import build_empty_model, release_layout_shapes
from segearth_model.config import SegEarthR1Config
from segearth_model.device import resolve_dtype
from segearth_model.errors import CheckpointError, ModelNotAvailableError
from segearth_model.loading import load_pretrained
from segearth_model.state_dict import UNUSED_AT_INFERENCE, convert_checkpoint_state_dict, to_release_state_dict
from segearth_model.tiny_random import build_tiny_random
from segearth_model.weights import check_keys, index_checkpoint



@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    # Nothing here may reach the hub; offline mode makes any attempt fail at once.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_random(device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def release_dir(tiny, tmp_path_factory):
    model, tokenizer = tiny
    return save_release_layout(model, tokenizer, tmp_path_factory.mktemp("release"), dtype=torch.float32)


def copy_release(release_dir: Path, target: Path) -> Path:
    target.mkdir()
    for item in release_dir.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    return target


def assert_same_state(left: torch.nn.Module, right: torch.nn.Module) -> None:
    a, b = left.state_dict(), right.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


# --- the fused QKV split -----------------------------------------------------------------


def test_qkv_is_split_per_head():
    config = SegEarthR1Config.tiny()
    heads, head_dim, hidden = 4, 16, 64
    # Row r of the fused weight belongs to head r // 48, projection (r % 48) // 16, dim r % 16.
    rows = torch.arange(3 * hidden, dtype=torch.float32)
    fused_weight = rows[:, None] * 1000 + torch.arange(hidden, dtype=torch.float32)[None, :]
    fused_bias = rows.clone()
    out = convert_checkpoint_state_dict(
        {
            "model.layers.1.self_attn.query_key_value.weight": fused_weight,
            "model.layers.1.self_attn.query_key_value.bias": fused_bias,
            "model.final_layernorm.weight": torch.ones(hidden),
        },
        config,
    )
    assert sorted(out) == sorted(
        ["model.final_layernorm.weight"]
        + [f"model.layers.1.self_attn.{p}.{k}" for p in ("q_proj", "k_proj", "v_proj") for k in ("weight", "bias")]
    )
    for which, name in enumerate(("q_proj", "k_proj", "v_proj")):
        weight = out[f"model.layers.1.self_attn.{name}.weight"]
        bias = out[f"model.layers.1.self_attn.{name}.bias"]
        assert weight.shape == (hidden, hidden) and bias.shape == (hidden,)
        for head in range(heads):
            for dim in (0, head_dim - 1):
                fused_row = head * 3 * head_dim + which * head_dim + dim
                assert bias[head * head_dim + dim] == fused_row
                assert weight[head * head_dim + dim, 5] == fused_row * 1000 + 5


def test_conversion_round_trips_the_fixture_weights():
    weights = load_file(str(conformance_file("tiny_weights.safetensors")))
    config = SegEarthR1Config.tiny()
    converted = convert_checkpoint_state_dict(weights, config)
    assert not any("query_key_value" in k for k in converted)
    assert len(converted) == len(weights) + 2 * config.language.num_hidden_layers * 2
    back = to_release_state_dict(converted, config)
    assert list(back) == list(weights)
    assert all(torch.equal(back[k], weights[k]) for k in weights)


def test_conversion_rejects_wrong_fused_shape():
    config = SegEarthR1Config.tiny()
    bad = {"model.layers.0.self_attn.query_key_value.weight": torch.zeros(64, 64)}
    with pytest.raises(CheckpointError, match=r"query_key_value\.weight.*\[64, 64\].*\[192, 64\]"):
        convert_checkpoint_state_dict(bad, config)


# --- the full-size key layout ------------------------------------------------------------


def test_full_size_model_reads_exactly_the_released_keys():
    manifest = json.loads(conformance_file("state_dict_manifest.json").read_text())["state_dict"]
    config = SegEarthR1Config()
    model = build_empty_model(config)
    assert all(p.is_meta for p in model.parameters())

    expected = {key: info["shape"] for key, info in manifest.items()}
    assert len(expected) == 935
    shapes = release_layout_shapes(model)
    assert {key: shape for key, (shape, _) in shapes.items()} == expected
    for key, (_, dtype) in shapes.items():
        assert dtype == (torch.int64 if manifest[key]["kind"] == "buffer" else torch.float32), key

    # The same through the writer's inverse conversion of the live state dict.
    release = to_release_state_dict(model.state_dict(), config)
    assert {key: list(t.shape) for key, t in release.items()} == expected
    parameters = sum(t.numel() for key, t in release.items() if manifest[key]["kind"] == "parameter")
    assert parameters == 1_588_495_416


def test_unused_tensors_are_accounted_for_by_name():
    manifest = json.loads(conformance_file("state_dict_manifest.json").read_text())["state_dict"]
    config = SegEarthR1Config()
    shapes = release_layout_shapes(build_empty_model(config))
    unused = [key for key in shapes if UNUSED_AT_INFERENCE.match(key)]
    assert "lm_head.weight" in unused and "seg_query" in unused and "predictor.CLASS_proj.layers.1.bias" in unused
    assert len(unused) == 14

    def count(keys):
        return sum(int(np.prod(manifest[k]["shape"])) for k in keys if manifest[k]["kind"] == "parameter")

    # The reference's accounting: lm_head 103,008,256 + seg_query 204,800 + decoder tables 340,480
    # unused; 1,484,941,880 parameters feed the masks.
    assert count(unused) == 103_008_256 + 204_800 + 340_480
    assert count([k for k in shapes if k not in unused]) == 1_484_941_880


# --- round trips ---------------------------------------------------------------------------


def predict(model, tokenizer, seed: int = 0) -> torch.Tensor:
    from segearth_model.predictor import MaskPredictor

    generator = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    images = torch.randint(0, 256, (1, 3, size, size), generator=generator, dtype=torch.uint8)
    return MaskPredictor(model, tokenizer).predict(images, ["where is the runway?", "find the large building"])


def test_release_round_trip_gives_equal_weights_and_outputs(tiny, release_dir):
    model, tokenizer = tiny
    names = sorted(p.name for p in release_dir.iterdir())
    for required in ("config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"):
        assert required in names
    stored = load_file(str(release_dir / "model.safetensors"))
    assert "model.layers.0.self_attn.query_key_value.weight" in stored
    assert not any("q_proj" in key for key in stored)

    loaded, loaded_tokenizer = load_pretrained(release_dir, device="cpu", dtype="fp32", official_numerics=False)
    assert loaded.config == model.config
    assert not loaded.is_placeholder
    assert_same_state(model, loaded)
    assert loaded_tokenizer.encode(" where is the runway?") == tokenizer.encode(" where is the runway?")
    assert torch.equal(predict(model, tokenizer), predict(loaded, loaded_tokenizer))


def test_bfloat16_release_stores_rounded_weights(tiny, tmp_path):
    model, tokenizer = tiny
    save_release_layout(model, tokenizer, tmp_path, dtype=torch.bfloat16)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    loaded, _ = load_pretrained(tmp_path, device="cpu", dtype="fp32", official_numerics=False)
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        if value.is_floating_point():
            assert value.dtype == torch.float32
            assert torch.equal(value, original[key].to(torch.bfloat16).to(torch.float32)), key


def test_official_numerics_round_weights_through_float16(tiny, release_dir):
    model, _ = tiny
    loaded, _ = load_pretrained(release_dir, device="cpu", dtype="auto", official_numerics=True)
    assert loaded.model.official_numerics
    original = model.state_dict()
    value = loaded.state_dict()["model.layers.0.mlp.fc1.weight"]
    assert value.dtype == torch.float32
    assert torch.equal(value, original["model.layers.0.mlp.fc1.weight"].half().float())
    assert not torch.equal(value, original["model.layers.0.mlp.fc1.weight"])


def test_rounding_through_float16_in_chunks_equals_rounding_whole_tensors(monkeypatch):
    from segearth_model import weights

    # Chunks of 7 elements: tensors shorter than a chunk, several chunks and a partial last one.
    monkeypatch.setattr(weights, "_ROUNDING_CHUNK", 7)
    generator = torch.Generator().manual_seed(3)
    extremes = torch.tensor([1e-8, -3e-6, 6e-5, 7e4, -1e5, 0.0, -0.0, 1.0 / 3.0], dtype=torch.bfloat16)
    tensors = {
        "small": torch.randn(5, generator=generator).to(torch.bfloat16),
        "extremes": extremes,
        "matrix": (torch.randn(6, 9, generator=generator) * 10 ** torch.randint(-7, 5, (6, 9), generator=generator)).to(torch.bfloat16),
        "transposed": torch.randn(4, 5, generator=generator).to(torch.bfloat16).t(),
        "index": torch.arange(10),
    }
    owned = dict(weights.owned_tensors(iter(tensors.items()), torch.device("cpu"), torch.float32, True))
    for key, tensor in tensors.items():
        expected = tensor.half().float() if tensor.is_floating_point() else tensor
        assert owned[key].dtype == expected.dtype and owned[key].shape == expected.shape, key
        # equal, signed zeros and infinities included
        assert torch.equal(owned[key], expected) and torch.equal(torch.signbit(owned[key]), torch.signbit(expected)), key
        assert owned[key].data_ptr() != tensor.data_ptr(), key
    assert torch.isinf(owned["extremes"]).sum() == 2 and (owned["extremes"] == 0).sum() == 3


def test_sharded_safetensors(tiny, tmp_path):
    model, tokenizer = tiny
    save_release_layout(model, tokenizer, tmp_path, dtype=torch.float32, max_shard_bytes=1_000_000)
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    loaded, _ = load_pretrained(tmp_path, device="cpu", dtype="fp32", official_numerics=False)
    assert_same_state(model, loaded)

    shards[-1].unlink()
    with pytest.raises(CheckpointError, match=shards[-1].name):
        load_pretrained(tmp_path, device="cpu", dtype="fp32", official_numerics=False)


@pytest.mark.parametrize("listed", [1, None, "", "/elsewhere/model.safetensors", "../model.safetensors"])
def test_a_shard_index_naming_no_file_beside_it_is_refused(tiny, tmp_path, listed):
    model, tokenizer = tiny
    save_release_layout(model, tokenizer, tmp_path, dtype=torch.float32, max_shard_bytes=1_000_000)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = listed
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: not a shard index \(weight_map names"):
        load_pretrained(tmp_path, device="cpu", dtype="fp32", official_numerics=False)


@pytest.mark.parametrize(("field", "value", "expected"), [
    (("segearth_architecture", "swin", "depths"), "2222", "swin.depths must be a list of whole numbers, not '2222'"),
    (("hidden_size",), 64.0, "language.hidden_size must be a whole number, not 64.0"),
    (("hidden_size",), "64", "language.hidden_size must be a whole number, not '64'"),
    (("segearth_architecture", "swin"), [1, 2], "swin must be a table of SwinConfig fields"),
    (("segearth_architecture", "pixel_mean"), [1.0], "pixel_mean must have 3 entries"),
    (("segearth_architecture", "image_size"), 0, "image_size must be at least 1, not 0"),
    (("segearth_architecture", "image_size"), True, "image_size must be a whole number, not True"),
    (("partial_rotary_factor",), 5.0, "language.partial_rotary_factor must be at most 1"),
])
def test_a_config_of_the_wrong_types_is_named_not_built(release_dir, tmp_path, field, value, expected):
    directory = copy_release(release_dir, tmp_path / "release")
    config = json.loads((directory / "config.json").read_text())
    table = config
    for key in field[:-1]:
        table = table[key]
    table[field[-1]] = value
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as refused:
        load_pretrained(directory, device="cpu", dtype="fp32", official_numerics=False)
    message = str(refused.value)
    assert message.startswith(f"{directory / 'config.json'}: not a SegEarth-R1 configuration (") and expected in message


def test_pytorch_bin_is_read_weights_only(tiny, release_dir, tmp_path):
    model, _ = tiny
    directory = copy_release(release_dir, tmp_path / "bin")
    state = load_file(str(directory / "model.safetensors"))
    (directory / "model.safetensors").unlink()
    torch.save(state, directory / "pytorch_model.bin")
    loaded, _ = load_pretrained(directory, device="cpu", dtype="fp32", official_numerics=False)
    assert_same_state(model, loaded)


class Payload:
    """A pickled object that weights-only loading must refuse to rebuild."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_pytorch_bin_with_code_is_refused(release_dir, tmp_path):
    directory = copy_release(release_dir, tmp_path / "bin")
    (directory / "model.safetensors").unlink()
    torch.save({"model.final_layernorm.weight": Payload()}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_pretrained(directory, device="cpu", dtype="fp32", official_numerics=False)


# --- broken checkpoints --------------------------------------------------------------------


def test_truncated_safetensors_names_the_file(release_dir, tmp_path):
    directory = copy_release(release_dir, tmp_path / "cut")
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError) as info:
        load_pretrained(directory, device="cpu", dtype="fp32", official_numerics=False)
    message = str(info.value)
    assert str(weights) in message and "truncated" in message and "\n" not in message


def test_garbage_safetensors_names_the_file(release_dir, tmp_path):
    directory = copy_release(release_dir, tmp_path / "garbage")
    (directory / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(directory, device="cpu", dtype="fp32", official_numerics=False)


def rewrite_weights(directory: Path, edit) -> Path:
    path = directory / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def test_missing_key_is_named(release_dir, tmp_path):
    directory = copy_release(release_dir, tmp_path / "missing")
    rewrite_weights(directory, lambda s: s.pop("predictor.query_feat.weight"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing key predictor\.query_feat\.weight$"):
        load_pretrained(directory, device="cpu", dtype="fp32", official_numerics=False)


def test_missing_fused_qkv_is_named_by_its_released_name(release_dir, tmp_path):
    directory = copy_release(release_dir, tmp_path / "missing_qkv")
    rewrite_weights(directory, lambda s: s.pop("model.layers.1.self_attn.query_key_value.bias"))
    with pytest.raises(CheckpointError, match=r"missing key model\.layers\.1\.self_attn\.query_key_value\.bias"):
        load_pretrained(directory, device="cpu", dtype="fp32", official_numerics=False)


def test_unexpected_key_is_named(release_dir, tmp_path):
    directory = copy_release(release_dir, tmp_path / "unexpected")
    rewrite_weights(directory, lambda s: s.__setitem__("lm_head.bias", torch.zeros(1002)))
    with pytest.raises(CheckpointError, match=r"unexpected key lm_head\.bias"):
        load_pretrained(directory, device="cpu", dtype="fp32", official_numerics=False)


def test_wrong_shape_is_named_with_both_shapes(release_dir, tmp_path):
    directory = copy_release(release_dir, tmp_path / "shape")
    rewrite_weights(directory, lambda s: s.__setitem__("seg_query", torch.zeros(5, 64)))
    with pytest.raises(CheckpointError, match=r"seg_query: checkpoint has \[5, 64\], model expects \[4, 64\]"):
        load_pretrained(directory, device="cpu", dtype="fp32", official_numerics=False)


def test_missing_config_and_missing_weights(release_dir, tmp_path):
    directory = copy_release(release_dir, tmp_path / "noconfig")
    (directory / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_pretrained(directory, device="cpu", dtype="fp32", official_numerics=False)
    directory = copy_release(release_dir, tmp_path / "noweights")
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights found"):
        load_pretrained(directory, device="cpu", dtype="fp32", official_numerics=False)


def test_check_keys_accepts_exactly_the_model_keys(release_dir):
    config = SegEarthR1Config.tiny()
    name, entries = index_checkpoint(release_dir)
    check_keys(name, entries, release_layout_shapes(build_empty_model(config)))


def test_fixture_checkpoint_loads_with_its_tiny_config(tmp_path):
    weights_path = conformance_file("tiny_weights.safetensors")
    model, _ = load_pretrained(write_fixture_checkpoint(tmp_path), device="cpu", dtype="fp32", official_numerics=False)
    assert model.config.swin == SegEarthR1Config.tiny().swin
    assert model.config.projector == SegEarthR1Config.tiny().projector
    expected = convert_checkpoint_state_dict(load_file(str(weights_path)), model.config)
    state = model.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


# --- the hub -------------------------------------------------------------------------------


def test_offline_uncached_repo_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(ModelNotAvailableError) as info:
        load_pretrained("earth-insights/SegEarth-R1-EarthReason", device="cpu")
    message = str(info.value)
    assert "earth-insights/SegEarth-R1-EarthReason" in message
    assert "segearth models pull earth-insights/SegEarth-R1-EarthReason" in message
    assert "\n" not in message


def test_not_a_directory_nor_a_repo(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="no such checkpoint directory"):
        load_pretrained(str(tmp_path / "nowhere" / "deeper" / "x"), device="cpu")
    file_path = tmp_path / "file.bin"
    file_path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a directory"):
        load_pretrained(file_path, device="cpu")


def test_cached_snapshot_loads_offline(tiny, release_dir, tmp_path, monkeypatch):
    """A repo in the standard cache layout (as `segearth models pull` leaves it) loads offline."""
    model, _ = tiny
    cache = tmp_path / "hf" / "hub" / "models--earth-insights--SegEarth-R1-Tiny"
    commit = "0" * 40
    snapshot = cache / "snapshots" / commit
    snapshot.parent.mkdir(parents=True)
    copy_release(release_dir, snapshot)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    loaded, _ = load_pretrained("earth-insights/SegEarth-R1-Tiny", device="cpu", dtype="fp32", official_numerics=False)
    assert_same_state(model, loaded)
    # A commit abbreviated as git does (7 hex digits or more), as `segearth models path` takes it.
    loaded, _ = load_pretrained("earth-insights/SegEarth-R1-Tiny", revision=commit[:7], device="cpu", dtype="fp32",
                                official_numerics=False)
    assert_same_state(model, loaded)
    with pytest.raises(ModelNotAvailableError, match="not in the local cache"):
        load_pretrained("earth-insights/SegEarth-R1-Tiny", revision="1" * 7, device="cpu", dtype="fp32")


def test_an_empty_model_name_is_not_the_current_folder(release_dir, monkeypatch):
    monkeypatch.chdir(release_dir)
    with pytest.raises(ModelNotAvailableError, match="an empty model name"):
        load_pretrained("", device="cpu", dtype="fp32")


# --- precision and device ------------------------------------------------------------------


def test_dtype_names():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", cpu, official_numerics=True) == torch.float32
    for name, dtype in [("fp32", torch.float32), ("float32", torch.float32), ("bf16", torch.bfloat16),
                        ("bfloat16", torch.bfloat16), ("fp16", torch.float16), ("float16", torch.float16)]:
        assert resolve_dtype(name, cpu) == dtype
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8", cpu)


def test_bfloat16_load_casts_floats_and_keeps_integer_buffers(release_dir):
    loaded, _ = load_pretrained(release_dir, device="cpu", dtype="bf16")
    state = loaded.state_dict()
    assert state["model.embed_tokens.weight"].dtype == torch.bfloat16
    index = state["model.vision_tower.layers.0.blocks.0.attn.relative_position_index"]
    assert index.dtype == torch.int64


def test_request_checks_name_the_checkpoint_that_cannot_serve(release_dir, tmp_path):
    from segearth_cli.errors import ModelUnavailableError
    from segearth_cli.segmenter import model_limits

    directory = copy_release(release_dir, tmp_path / "short_context")
    config = json.loads((directory / "config.json").read_text())
    config["max_position_embeddings"] = 10
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelUnavailableError, match=r"short_context/config.json: max_position_embeddings 10 leaves no room"):
        model_limits(str(directory))

    directory = copy_release(release_dir, tmp_path / "no_seg")
    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["content"] != "[SEG]"]
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ModelUnavailableError) as refused:
        model_limits(str(directory))
    assert str(refused.value).startswith(f"{directory}: ") and "[SEG]" in str(refused.value)
