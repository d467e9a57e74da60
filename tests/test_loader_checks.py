"""Every loader checks the types and ranges of what it reads before it allocates or computes with them,
and says in one line naming the file what is wrong: GGUF headers (alignment, array nesting, tensor
dims and offsets against the file size), the hyperparameters of GGUF, Hugging Face and Meta checkpoints,
Meta .pth contents, SAE folders, capture manifests and batches.json, and JSON nested too deep anywhere.

GGUF files are written here byte by byte after the format's specification (ggml's docs/gguf.md), so
each field can be given a value no writer would produce.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import records
from llama.jsonfile import MAX_DEPTH, json_depth, parse_json, read_json
from llama.loading import open_checkpoint
from llama.loading.gguf_reader import read_gguf
from sae.io import load_config, load_sae

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DEEP = "[" * 100_000 + "]" * 100_000  # Python's parser alone raises RecursionError on this


def one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    """The error's text, checked to be one line holding every one of `parts`."""
    text = str(err.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, text
    return text


# ---- the JSON reader -----------------------------------------------------------------------------

def test_json_depth_counts_brackets_outside_strings():
    assert json_depth('{"a": [1, {"b": "[[[{{{"}], "c": "\\"]]"}') == 3
    assert json_depth('["\\\\", [1]]') == 2 and json_depth('{"é[[": "\\u005b"}') == 1  # escapes, non-ASCII
    assert json_depth("[]") == 1 and json_depth("3") == 0 and json_depth(DEEP) == 100_000


def test_json_nested_too_deep_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(ValueError) as err:
        read_json(path, "write it again")
    one_line(err, "deep.json", f"more than {MAX_DEPTH} levels deep", "write it again")
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH  # exactly the limit still reads
    assert parse_json(nested, "x") == json.loads(nested)


@pytest.mark.parametrize("text, kind", [("[1]", "a JSON list"), ('"x"', "a string"), ("3", "a whole number")])
def test_json_of_the_wrong_kind_is_one_line(tmp_path, text, kind):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        read_json(path, expect=dict)
    one_line(err, "c.json", f"expected a JSON object, got {kind}")


def test_json_not_utf8_or_a_folder(tmp_path):
    path = tmp_path / "c.json"
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError) as err:
        read_json(path)
    one_line(err, "c.json: not UTF-8")
    with pytest.raises(FileNotFoundError) as err:
        read_json(tmp_path)
    one_line(err, "a folder, not a file")


# ---- GGUF ------------------------------------------------------------------------------------------

U32, I32, F32, BOOL, STRING, ARRAY, U64 = 4, 5, 6, 7, 8, 9, 10
GGML_F32 = 0
LLAMA = {"general.architecture": (STRING, "llama"), "llama.embedding_length": (U32, 64),
         "llama.block_count": (U32, 2), "llama.attention.head_count": (U32, 4),
         "llama.attention.head_count_kv": (U32, 2), "llama.feed_forward_length": (U32, 192),
         "llama.attention.layer_norm_rms_epsilon": (F32, 1e-5), "llama.context_length": (U32, 256),
         "llama.vocab_size": (U32, 256)}
_PACK = {U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q"}


def gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def gguf_value(vtype: int, value) -> bytes:
    if vtype == STRING:
        return gguf_string(value)
    if vtype == ARRAY:  # value: (item type, [items])
        item_type, items = value
        return struct.pack("<IQ", item_type, len(items)) + b"".join(gguf_value(item_type, v) for v in items)
    return struct.pack(_PACK[vtype], value)


def gguf_bytes(metadata: dict, tensors: list[tuple[str, tuple[int, ...], int]] = (), data: bytes = b"",
               alignment: int = 32, raw_metadata: bytes = b"", extra_kv: int = 0) -> bytes:
    """A GGUF v3 file: metadata {key: (type, value)}, tensors [(name, dims fastest first, offset)] of F32,
    the data section at the next multiple of `alignment`."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata) + extra_kv)
    head += b"".join(gguf_string(k) + struct.pack("<I", t) + gguf_value(t, v) for k, (t, v) in metadata.items())
    head += raw_metadata
    for name, dims, offset in tensors:
        head += gguf_string(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", GGML_F32, offset)
    return head + b"\x00" * (-len(head) % alignment) + data


def write_gguf(tmp_path: Path, **kwargs) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes(**kwargs))
    return path


def test_a_hand_written_gguf_reads_and_opens(tmp_path):
    """The writer above against the gguf package's reader, and the baseline every case below changes."""
    import gguf
    data = struct.pack("<4f", 1, 2, 3, 4)
    path = write_gguf(tmp_path, metadata=LLAMA, tensors=[("output_norm.weight", (4,), 0)], data=data)
    theirs = gguf.GGUFReader(path)
    ours = read_gguf(path)
    assert ours.metadata["llama.embedding_length"] == 64 and ours.tensors["output_norm.weight"].shape == (4,)
    assert ours.tensors["output_norm.weight"].offset == theirs.tensors[0].data_offset
    assert open_checkpoint(path).args.dim == 64


@pytest.mark.parametrize("alignment, shown", [((U32, 0), "0"), ((STRING, "32"), "'32'"), ((U32, 48), "48"),
                                              ((F32, 32.0), "32.0")])
def test_gguf_alignment_must_be_a_power_of_two(tmp_path, alignment, shown):
    path = write_gguf(tmp_path, metadata={**LLAMA, "general.alignment": alignment})
    with pytest.raises(ValueError) as err:
        read_gguf(path)
    one_line(err, "m.gguf", "general.alignment", "power of two", shown)


def test_gguf_arrays_nested_deeper_than_the_limit_are_refused(tmp_path):
    nested = gguf_string("deep") + struct.pack("<I", ARRAY) + struct.pack("<IQ", ARRAY, 1) * 20_000 \
        + struct.pack("<IQ", U32, 0)
    path = write_gguf(tmp_path, metadata=LLAMA, raw_metadata=nested, extra_kv=1)
    with pytest.raises(ValueError) as err:
        read_gguf(path)
    one_line(err, "m.gguf", "deep", "nests arrays")
    shallow = gguf_string("ok") + struct.pack("<I", ARRAY) + struct.pack("<IQ", ARRAY, 1) + struct.pack("<IQ", U32, 1) \
        + struct.pack("<I", 7)
    assert read_gguf(write_gguf(tmp_path, metadata=LLAMA, raw_metadata=shallow, extra_kv=1)).metadata["ok"] == [[7]]


@pytest.mark.parametrize("dims, problem", [
    ((1 << 32, 1 << 32), "ends past the end of the file"),  # the element count wraps to 0 in 64-bit arithmetic
    (((1 << 64) - 1,), "ends past the end of the file"),     # more than a signed 64-bit count holds
    ((1 << 62,), "ends past the end of the file"),
    ((4, 1, 1, 1, 1), "5 dimensions"),
])
def test_gguf_tensor_dims_are_checked_against_the_file_before_any_allocation(tmp_path, dims, problem):
    path = write_gguf(tmp_path, metadata=LLAMA, tensors=[("output_norm.weight", dims, 0)], data=b"\x00" * 64)
    with pytest.raises(ValueError) as err:
        read_gguf(path)
    one_line(err, "m.gguf", "output_norm.weight", problem)


def test_gguf_tensor_offsets_must_be_aligned_and_inside_the_file(tmp_path):
    path = write_gguf(tmp_path, metadata=LLAMA, tensors=[("output_norm.weight", (4,), 4)], data=b"\x00" * 64)
    with pytest.raises(ValueError) as err:
        read_gguf(path)
    one_line(err, "m.gguf", "output_norm.weight", "offset 4", "multiple of 32")
    path = write_gguf(tmp_path, metadata=LLAMA, tensors=[("output_norm.weight", (4,), 1 << 63)], data=b"\x00" * 64)
    with pytest.raises(ValueError) as err:
        read_gguf(path)
    one_line(err, "m.gguf", "output_norm.weight")


@pytest.mark.parametrize("key, value, shown", [
    ("llama.embedding_length", (F32, 576.0), "576.0"),
    ("llama.embedding_length", (STRING, "576"), "'576'"),
    ("llama.embedding_length", (U64, 1 << 62), str(1 << 62)),
    ("llama.block_count", (I32, -2), "-2"),
    ("llama.attention.layer_norm_rms_epsilon", (F32, float("nan")), "nan"),
    ("llama.rope.freq_base", (F32, float("inf")), "inf"),
    ("llama.context_length", (BOOL, True), "True"),
])
def test_gguf_hyperparameters_are_typed_and_bounded(tmp_path, key, value, shown):
    path = write_gguf(tmp_path, metadata={**LLAMA, key: value})
    with pytest.raises(ValueError) as err:
        open_checkpoint(path)
    one_line(err, "m.gguf", key, shown)


# ---- Hugging Face and Meta checkpoints ------------------------------------------------------------

HF_CONFIG = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 256, "intermediate_size": 192, "rms_norm_eps": 1e-5,
             "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": False}
META_PARAMS = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 256, "multiple_of": 32,
               "norm_eps": 1e-5, "rope_theta": 10000.0}


def hf_folder(tmp_path: Path, config_text: str) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(config_text)
    save_file({"model.norm.weight": torch.ones(64)}, str(folder / "model.safetensors"))
    return folder


def meta_folder(tmp_path: Path, params: dict, shard=...) -> Path:
    folder = tmp_path / "meta"
    folder.mkdir(exist_ok=True)
    (folder / "params.json").write_text(json.dumps(params))
    torch.save({"norm.weight": torch.ones(64)} if shard is ... else shard, folder / "consolidated.00.pth")
    return folder


def test_the_baseline_folders_open(tmp_path):
    assert open_checkpoint(hf_folder(tmp_path, json.dumps(HF_CONFIG))).args.dim == 64
    assert open_checkpoint(meta_folder(tmp_path, META_PARAMS)).args.dim == 64


@pytest.mark.parametrize("key, value, shown", [
    ("hidden_size", "576", "'576'"),
    ("hidden_size", 576.0, "576.0"),
    ("vocab_size", 1 << 62, str(1 << 62)),
    ("num_hidden_layers", True, "True"),
    ("rms_norm_eps", float("nan"), "nan"),
    ("rope_theta", -1.0, "-1.0"),
    ("max_position_embeddings", [8192], "[8192]"),
    ("tie_word_embeddings", "false", "'false'"),
    ("rope_scaling", {"rope_type": "llama3", "factor": "8", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}, "'8'"),
])
def test_hf_config_values_are_typed_and_bounded(tmp_path, key, value, shown):
    folder = hf_folder(tmp_path, json.dumps({**HF_CONFIG, key: value}))
    with pytest.raises(ValueError) as err:
        open_checkpoint(folder)
    one_line(err, "config.json", key, shown)


@pytest.mark.parametrize("text, problem", [
    (DEEP, "levels deep"),
    ("[1, 2]", "expected a JSON object, got a JSON list"),
])
def test_hf_config_that_is_not_an_object(tmp_path, text, problem):
    with pytest.raises(ValueError) as err:
        open_checkpoint(hf_folder(tmp_path, text))
    one_line(err, "config.json", problem)


def test_hf_index_nested_too_deep(tmp_path):
    folder = hf_folder(tmp_path, json.dumps(HF_CONFIG))
    (folder / "model.safetensors.index.json").write_text(DEEP)
    with pytest.raises(ValueError) as err:
        open_checkpoint(folder)
    one_line(err, "model.safetensors.index.json", "levels deep")


@pytest.mark.parametrize("weight_map, problem", [
    ({"model.norm.weight": "../outside.safetensors"}, "outside the folder"),
    (["model.safetensors"], "a weight_map of tensor -> file name"),
    ({"model.norm.weight": 3}, "a weight_map of tensor -> file name"),
])
def test_hf_index_names_plain_files_of_the_folder(tmp_path, weight_map, problem):
    folder = hf_folder(tmp_path, json.dumps(HF_CONFIG))
    shutil.copy(folder / "model.safetensors", tmp_path / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ValueError) as err:
        open_checkpoint(folder)
    one_line(err, "model.safetensors.index.json", problem)


@pytest.mark.parametrize("key, value, shown", [
    ("dim", 64.0, "64.0"),
    ("n_layers", "2", "'2'"),
    ("norm_eps", float("inf"), "inf"),
    ("ffn_dim_multiplier", float("nan"), "nan"),
    ("vocab_size", 1 << 40, str(1 << 40)),
    ("rope_scaling_factor", "eight", "'eight'"),
    ("use_scaled_rope", "no", "'no'"),
])
def test_meta_params_are_typed_and_bounded(tmp_path, key, value, shown):
    params = {**META_PARAMS, key: value, **({"use_scaled_rope": True} if key == "rope_scaling_factor" else {})}
    with pytest.raises(ValueError) as err:
        open_checkpoint(meta_folder(tmp_path, params))
    one_line(err, "params.json", key, shown)


@pytest.mark.parametrize("shard, found", [([1, 2], "a list"), (7, "an int"), (None, "None"),
                                          ({"norm.weight": [1.0]}, "norm.weight holds a list"),
                                          ({3: torch.ones(2)}, "key 3")])
def test_meta_shard_that_is_not_a_dict_of_tensors(tmp_path, shard, found):
    with pytest.raises(ValueError) as err:
        open_checkpoint(meta_folder(tmp_path, META_PARAMS, shard))
    one_line(err, "consolidated.00.pth", found, "tensor names to tensors")


# ---- SAE folders -----------------------------------------------------------------------------------

def sae_folder(tmp_path: Path, case: str = "dataset_scale", version: str = "sae_v2") -> Path:
    folder = tmp_path / "sae"
    shutil.copytree(FIXTURES / version / case, folder)
    return folder


def test_sae_config_nested_too_deep_is_one_line(tmp_path):
    folder = sae_folder(tmp_path)
    (folder / "config.json").write_text(DEEP)
    with pytest.raises(ValueError) as err:
        load_config(folder)
    one_line(err, "config.json", "levels deep")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.uint8])
def test_sae_weights_must_be_floating_point(tmp_path, dtype):
    folder = sae_folder(tmp_path)
    path = folder / "sae.safetensors"
    tensors = load_file(str(path))
    tensors["W_enc"] = tensors["W_enc"].to(dtype)
    save_file(tensors, str(path), metadata={"format": "llama-sae", "version": "2"})
    with pytest.raises(ValueError) as err:
        load_sae(folder)
    one_line(err, "sae.safetensors", "W_enc", "floating point")


@pytest.mark.parametrize("norm_scale", [float("nan"), float("inf"), 0, -1.5, "0.3", [0.3], True])
def test_format_1_norm_scale_must_be_a_positive_finite_number(tmp_path, norm_scale):
    folder = sae_folder(tmp_path, version="sae_v1")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "norm_scale": norm_scale}))
    with pytest.raises(ValueError) as err:
        load_sae(folder)
    one_line(err, "config.json", "norm_scale", "positive")


def test_sparsify_run_config_nested_too_deep_is_ignored_like_any_unreadable_one(tmp_path):
    """sparsify's run config only lends the model's name; an unreadable one leaves it blank."""
    from sae.formats.sparsify import _model_name
    (tmp_path / "config.json").write_text(DEEP)
    assert _model_name(tmp_path / "layers.3" / "cfg.json") == ""


def test_openai_activation_metadata_nested_too_deep_is_one_line(tmp_path):
    from sae.formats.openai import read
    path = tmp_path / "20.safetensors"
    save_file({"pre_bias": torch.zeros(4)}, str(path), metadata={"activation": "TopK", "activation_state_dict": DEEP})
    with pytest.raises(ValueError) as err:
        read(path, hook_name="blocks.20.hook_resid_post")
    one_line(err, "20.safetensors", "activation_state_dict", "levels deep")


# ---- capture manifests, batches.json, stats.json -------------------------------------------------

@pytest.fixture(scope="module")
def prebatched(tmp_path_factory) -> Path:
    """A synthetic capture (two shards of 4-wide float32 rows) and its batches."""
    import numpy as np

    from data.shuffle import PrebatchConfig, prebatch
    from synthetic_capture import random_corpus, write_captured
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    tokens, index, sentences = random_corpus(rng, 40)
    write_captured(root / "capture", rng.normal(size=(len(tokens), 4)).astype(np.float32), tokens, index, sentences,
                   shard_rows=100)
    prebatch(root / "capture", root / "batches", PrebatchConfig(batch_size=8, val_fraction=0.25))
    return root


def edited(prebatched: Path, tmp_path: Path, kind: str, name: str, change) -> Path:
    """A copy of the capture or batches folder whose JSON file `name` is rewritten: `change(value)` returns
    the new value, or text to write as is."""
    folder = tmp_path / kind
    shutil.copytree(prebatched / kind, folder)
    new = change(json.loads((folder / name).read_text()))
    (folder / name).write_text(new if isinstance(new, str) else json.dumps(new))
    return folder


def test_the_baseline_data_folders_read(prebatched):
    from data.batches import BatchDataset
    from data.shards import CapturedDataset
    assert CapturedDataset(prebatched / "capture").total_rows > 0
    assert BatchDataset(prebatched / "batches", "val")[0].shape == (8, 4)


@pytest.mark.parametrize("change, problem", [
    (lambda m: DEEP, "levels deep"),
    (lambda m: [m], "expected a JSON object, got a JSON list"),
    (lambda m: {**m, "d_model": "4"}, "d_model must be a whole number >= 1, got '4'"),
    (lambda m: {**m, "d_model": 4.0}, "d_model must be a whole number >= 1, got 4.0"),
    (lambda m: {**m, "dtype": "int3"}, "dtype must be one of float32, float16, bfloat16, got 'int3'"),
    (lambda m: {**m, "hook": 20}, "hook must be a string"),
    (lambda m: {**m, "shards": {"0": 1}}, "shards must be a list of objects"),
    (lambda m: {**m, "shards": [{"shard": 0}]}, "shards[0].rows must be a whole number >= 0, got None"),
    (lambda m: {**m, "shards": [{"shard": "0", "rows": 3}]}, "shards[0].shard must be a whole number >= 0"),
    (lambda m: {**m, "labels": "positive"}, "labels must be a list of strings"),
    (lambda m: {**m, "context_prefix": [1, "x"]}, "context_prefix must be a list of token ids"),
])
def test_capture_manifest_fields_are_typed(prebatched, tmp_path, change, problem):
    from data.shards import CapturedDataset
    folder = edited(prebatched, tmp_path, "capture", "manifest.json", change)
    with pytest.raises(ValueError) as err:
        CapturedDataset(folder)
    one_line(err, "manifest.json", problem)


@pytest.mark.parametrize("name, change, problem", [
    ("batches.json", lambda m: DEEP, "levels deep"),
    ("batches.json", lambda m: {**m, "batch_size": "8"}, "batch_size must be a whole number >= 1, got '8'"),
    ("batches.json", lambda m: {**m, "d_model": 0}, "d_model must be a whole number >= 1, got 0"),
    ("batches.json", lambda m: {**m, "files": []}, "files must be an object"),
    ("batches.json", lambda m: {**m, "files": {**m["files"], "val": [{"name": "../../x.bin", "batches": 1}]}},
     "files.val[0].name must be a file name in the folder, got '../../x.bin'"),
    ("batches.json", lambda m: {**m, "files": {**m["files"], "val": [{"name": "val-00000.bin", "batches": -1}]}},
     "files.val[0].batches must be a whole number >= 0, got -1"),
    ("batches.json", lambda m: {**m, "remainders": {**m["remainders"], "val": {"name": "val-remainder.bin", "rows": 1.5}}},
     "remainders.val.rows must be a whole number >= 0, got 1.5"),
    ("stats.json", lambda m: DEEP, "levels deep"),
    ("stats.json", lambda m: {"val": m["val"]}, "train must be an object"),
    ("stats.json", lambda m: {**m, "train": {**m["train"], "mean_sq_norm": "NaN"}},
     "train.mean_sq_norm must be a finite number >= 0"),
    ("stats.json", lambda m: {**m, "train": {**m["train"], "mean": [0.0] * 3}}, "train.mean must be a list of 4"),
    ("stats.json", lambda m: {**m, "train": {**m["train"], "mean": [float("nan")] * 4}}, "train.mean must be a list"),
])
def test_batches_json_and_stats_fields_are_typed(prebatched, tmp_path, name, change, problem):
    from data.batches import BatchDataset
    folder = edited(prebatched, tmp_path, "batches", name, change)
    with pytest.raises(ValueError) as err:
        BatchDataset(folder, "val")
    one_line(err, name, problem)


@pytest.mark.parametrize("name, text, problem", [
    ("manifest.json", DEEP, "levels deep"),
    ("progress-rank1.json", DEEP, "levels deep"),
    ("progress-rank1.json", '{"shard": 0}', "the file must be a list of objects"),
    ("progress-rank1.json", '[{"shard": 7, "rows": "3"}]', "[0].rows must be a whole number >= 0, got '3'"),
])
def test_a_capture_rerun_reads_its_manifest_and_progress_files_typed(prebatched, tmp_path, name, text, problem):
    from data.manifest import CaptureBook
    folder = tmp_path / "capture"
    shutil.copytree(prebatched / "capture", folder)
    (folder / name).write_text(text)
    book = CaptureBook({"h": folder}, {"dtype": "float32"})
    with pytest.raises(ValueError) as err:
        book.start({"h": 4})
    one_line(err, name, problem)


# ---- the other JSON the scripts read ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json"])
def test_a_checkpoint_tokenizer_nested_too_deep_is_one_line(tmp_path, name):
    from llama.tokenizers import load_tokenizer
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                                         "decoder": {"type": "ByteLevel"}}))
    (tmp_path / name).write_text(DEEP)
    with pytest.raises(ValueError) as err:
        load_tokenizer(tmp_path)
    one_line(err, name, "levels deep")


def test_a_sentence_line_nested_too_deep_is_one_line(prebatched, tmp_path):
    from data.prepare import read_sentences
    from latents.source import read_sentence_table
    path = tmp_path / "sentences.jsonl"
    path.write_text((prebatched / "capture" / "sentences.jsonl").read_text() + DEEP + "\n")
    with pytest.raises(ValueError) as err:
        read_sentence_table(path, [])
    one_line(err, "sentences.jsonl", "line 41")
    with pytest.raises(ValueError) as err:
        list(read_sentences(path))
    one_line(err, "sentences.jsonl", "line 41", "levels deep")


def test_a_corpus_line_nested_too_deep_is_one_line(tmp_path):
    from data.text import TextSource, iter_documents
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n' + DEEP + "\n")
    with pytest.raises(ValueError) as err:
        list(iter_documents(TextSource(path)))
    one_line(err, "c.jsonl:2", "levels deep", "one object per line")


def test_unreadable_records_of_interpret_and_train_are_left_out(tmp_path):
    """A latent record or a metrics line nested too deep is skipped like any unreadable one."""
    from latents.report import read_latent_facts
    from training.metrics import read_metrics
    (tmp_path / "latents").mkdir()
    (tmp_path / "latents" / "3.json").write_text(DEEP)
    (tmp_path / "latents" / "4.json").write_text('{"max": 2.5, "labels": []}')
    assert read_latent_facts(tmp_path, [3, 4]) == {4: {"max": 2.5, "labels": {}, "page": False}}
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n' + DEEP + '\n{"step": 2}\n')
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1}, {"step": 2}]


def test_interpret_reads_the_validation_split_from_a_checked_batches_json(tmp_path):
    import interpret
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "batches.json").write_text(DEEP)
    cfg = interpret.InterpretConfig(batches_dir=tmp_path)
    with pytest.raises(ValueError) as err:
        interpret.validation_split(cfg, "h")
    one_line(err, "batches.json", "levels deep")


@pytest.fixture(scope="module")
def smol_metadata(gguf_path) -> dict:
    return read_gguf(gguf_path).metadata


@pytest.mark.parametrize("key, value, shown", [
    ("tokenizer.ggml.eos_token_id", "2", "'2'"),
    ("tokenizer.ggml.eos_token_id", 10 ** 9, "1000000000"),
    ("tokenizer.ggml.bos_token_id", True, "True"),
    ("tokenizer.ggml.padding_token_id", -1, "-1"),
    ("tokenizer.ggml.tokens", [1, 2, 3], "[1, 2, 3]"),
    ("tokenizer.ggml.tokens", "abc", "'abc'"),
    ("tokenizer.ggml.merges", 5, "5"),
    ("tokenizer.ggml.merges", ["a b", "ab"], "'ab'"),
    ("tokenizer.ggml.token_type", "x", "'x'"),
    ("tokenizer.ggml.token_type", [1, 1], "2 types"),
    ("tokenizer.chat_template", 5, "5"),
    ("tokenizer.ggml.pre", 5, "5"),
    ("tokenizer.ggml.add_bos_token", "false", "'false'"),
])
def test_gguf_tokenizer_metadata_is_typed_and_bounded(smol_metadata, key, value, shown):
    from llama.tokenizers import bpe_from_gguf
    with pytest.raises(ValueError) as err:
        bpe_from_gguf({**smol_metadata, key: value}, source="m.gguf")
    one_line(err, "m.gguf", key, shown)


def test_pipeline_reads_its_own_records_through_the_checked_reader(tmp_path):
    import pipeline
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    assert pipeline.previous_timings(deep) == {}  # an unreadable earlier summary only loses the old times
    with pytest.raises(ValueError) as err:
        pipeline.read_json(deep)
    one_line(err, "deep.json", "levels deep")
    assert records.read_record(deep) is None  # a stage record that cannot be read proves nothing: redone
    assert pipeline._saved_settings(deep) is None
    (tmp_path / "latents").mkdir()
    (tmp_path / "latents" / "5.json").write_text(DEEP)
    with pytest.raises(ValueError) as err:
        pipeline.sentiment_latents(tmp_path, "positive")
    one_line(err, "5.json", "levels deep")

