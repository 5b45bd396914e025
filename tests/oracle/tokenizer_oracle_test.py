"""Oracle test of our byte-level BPE tokenizer, pre-tokenizers and chat templates.

References no one here wrote:
- token ids: Hugging Face transformers' tokenizer built from the same GGUF (4.46, via
  llama_ref.hf_tokenizer_from_gguf), and our FromHfJson loader fed the tokenizer.json that HF
  itself writes (save_pretrained), so both of our loaders are checked;
- pre-tokenizer pieces: Python `regex` with HF's patterns, and HF tokenizers' own
  pre-tokenizers (Oniguruma), for every rule we implement (gpt2, llama3, qwen2, smollm);
- chat templates: jinja2 rendering the model's own template (read with gguf-py), as
  transformers' apply_chat_template does.

One correction to the HF oracle, and why: transformers 4.46 builds the tokenizer of a GGUF of
architecture `llama` with the plain GPT-2 ByteLevel pre-tokenizer and ignores
`tokenizer.ggml.pre`; SmolLM2's own tokenizer.json (and llama.cpp's `smollm` rule) first
splits every digit (`Digits(individual_digits=True)`). We give the HF tokenizer that
pre-tokenizer for the smollm comparison, and compare the uncorrected one with our `gpt2` rule
(through the tokenizer.json it writes), so both rules are checked against real HF ids.
"""

import copy
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest
import regex

sys.path.insert(0, os.path.dirname(__file__))
import tokenizer_corpus  # noqa: E402

# HF tokenizers' patterns for the rules (tokenizer.json of GPT-2, Llama-3, Qwen2; SmolLM2 uses
# Digits + the GPT-2 ByteLevel regex).
GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"""
          r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
         r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
RULES = ["gpt2", "llama3", "qwen2", "smollm"]


def regex_pieces(rule: str, text: str) -> list[str]:
    """Pieces per the Python `regex` module; unmatched stretches kept (there are none for
    valid text: each pattern ends in \\s+ and covers every other character)."""
    def split(pattern, s):
        out, pos = [], 0
        for m in regex.finditer(pattern, s):
            if m.start() > pos:
                out.append(s[pos:m.start()])
            out.append(m.group())
            pos = m.end()
        if pos < len(s):
            out.append(s[pos:])
        return out

    if rule == "smollm":
        return [p for piece in split(r"\p{N}", text) for p in split(GPT2, piece)]
    return split({"gpt2": GPT2, "llama3": LLAMA3, "qwen2": QWEN2}[rule], text)


def hf_pre_tokenizer(rule: str):
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    byte_level = pt.ByteLevel(add_prefix_space=False, use_regex=True)
    if rule == "gpt2":
        return byte_level
    if rule == "smollm":
        return pt.Sequence([pt.Digits(individual_digits=True), byte_level])
    pattern = LLAMA3 if rule == "llama3" else QWEN2
    return pt.Split(Regex(pattern), behavior="isolated", invert=False)


def hf_pieces(pre, text: str) -> list[str]:
    # Offsets are in characters of the original text, whatever the piece's byte-level spelling.
    return [text[a:b] for _, (a, b) in pre.pre_tokenize_str(text)]


@pytest.fixture(scope="module")
def corpus(paraphrase_corpus):
    c = tokenizer_corpus.build_corpus(paraphrase_corpus)
    assert len(c) >= 500, len(c)
    assert len(set(c)) >= 500, "corpus lost its variety"
    return c


@pytest.fixture(scope="module")
def dump_bin(binary_dir):
    path = binary_dir / "tests" / "tokenize_dump"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build target `tokenize_dump` in {binary_dir}")
    return path


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="tokenizer_oracle_") as d:
        yield pathlib.Path(d)


def run_dump(dump_bin, workdir, strings, *args, chat=None):
    inp = workdir / "in.json"
    out = workdir / "out.json"
    inp.write_text(json.dumps(strings), encoding="utf-8")
    cmd = [str(dump_bin), "--input", str(inp), "--output", str(out), *map(str, args)]
    if chat is not None:
        chat_path = workdir / "chat.json"
        chat_path.write_text(json.dumps(chat), encoding="utf-8")
        cmd += ["--chat", str(chat_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed: {proc.stderr}"
    return json.loads(out.read_text(encoding="utf-8"))


def hf_from_gguf(model_path):
    import llama_ref

    return llama_ref.hf_tokenizer_from_gguf(str(model_path))


def with_smollm_digits(tok):
    from tokenizers import pre_tokenizers as pt

    tok.backend_tokenizer.pre_tokenizer = pt.Sequence([
        pt.Digits(individual_digits=True),
        pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    return tok


@pytest.fixture(scope="module")
def gguf_fields(model_path):
    from gguf import GGUFReader

    return GGUFReader(str(model_path)).fields


def compare_ids(tok, corpus, ours, label):
    """Asserts ours == HF's ids for each string, with and without special-token parsing."""
    failures = []
    for key, split_special in (("ids", False), ("ids_plain", True)):
        for i, text in enumerate(corpus):
            want = tok(text, add_special_tokens=False, split_special_tokens=split_special)["input_ids"]
            got = ours[key][i]
            if got != want:
                at = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b),
                          min(len(got), len(want)))
                failures.append(
                    f"[{label} {key}] string {i} {text!r}\n  first difference at token {at}\n"
                    f"  hf : {want[max(0, at - 3):at + 5]} "
                    f"{tok.convert_ids_to_tokens(want[max(0, at - 3):at + 5])}\n"
                    f"  ours: {got[max(0, at - 3):at + 5]} "
                    f"{tok.convert_ids_to_tokens(got[max(0, at - 3):at + 5])}")
    assert not failures, f"{len(failures)} mismatches; first ones:\n" + "\n".join(failures[:8])


def test_pre_type_is_smollm(gguf_fields):
    # The correction described in the module docstring applies to this pre type only.
    assert gguf_fields["tokenizer.ggml.pre"].contents() == "smollm"


@pytest.fixture(scope="module")
def hf_gpt2(model_path):
    return hf_from_gguf(model_path)


@pytest.fixture(scope="module")
def hf_smollm(hf_gpt2):
    # A copy given the smollm pre-tokenizer (see the module docstring); loading is slow.
    return with_smollm_digits(copy.deepcopy(hf_gpt2))


@pytest.fixture(scope="module")
def ours_gguf(model_path, corpus, dump_bin, workdir):
    return run_dump(dump_bin, workdir, corpus, "--model", model_path)


def test_gguf_ids_equal_hf(corpus, ours_gguf, hf_smollm):
    assert ours_gguf["pre_tokenizer"] == "smollm"
    compare_ids(hf_smollm, corpus, ours_gguf, "gguf")
    total = sum(len(x) for x in ours_gguf["ids"])
    assert total > 20000, f"corpus too small to mean much: {total} tokens"
    # Specials are parsed in at least some strings, and only with parse_special.
    assert any(1 in ids for ids in ours_gguf["ids"])
    assert not any(1 in ids for ids in ours_gguf["ids_plain"])


def expected_decode(tok, vocab, text: str) -> str:
    """`text` as a byte-level tokenizer gives it back: SmolLM2's vocabulary lacks the tokens of
    a few bytes (0x04 0x06 0x13 0x14 0x16 0x1D, bytes never in UTF-8, and F1 F2), which
    encode as the unknown token, as in HF. Everything else must come back unchanged."""
    byte_level = tok.backend_tokenizer.pre_tokenizer
    out = []
    for ch in text:
        encoded = byte_level.pre_tokenize_str(ch)[0][0] if ch != " " else "Ġ"
        if all(c in vocab for c in encoded):
            out.append(ch)
        else:
            assert len(ch.encode()) == 1, f"corpus char {ch!r} is partly missing from the vocab"
            out.append(tok.unk_token)
    return "".join(out)


def check_round_trip(tok, corpus, decoded):
    bad, replaced = [], 0
    vocab = tok.get_vocab()
    for i, (text, got) in enumerate(zip(corpus, decoded)):
        want = expected_decode(tok, vocab, text)
        replaced += want != text
        if got != want:
            bad.append((i, text, got))
    assert not bad, f"{len(bad)} strings do not round-trip, e.g. {bad[:3]}"
    assert replaced <= 3, "the corpus should not lean on bytes the vocabulary lacks"


def test_round_trip(corpus, ours_gguf, hf_gpt2):
    check_round_trip(hf_gpt2, corpus, ours_gguf["decoded"])


@pytest.mark.parametrize("smollm_digits", [True, False], ids=["smollm", "gpt2"])
def test_hf_json_ids_equal_hf(corpus, dump_bin, workdir, smollm_digits, hf_smollm, hf_gpt2):
    tok = hf_smollm if smollm_digits else hf_gpt2
    saved = workdir / ("hf_smollm" if smollm_digits else "hf_gpt2")
    tok.save_pretrained(saved)
    ours = run_dump(dump_bin, workdir, corpus, "--model", saved / "tokenizer.json",
                    "--config", saved / "tokenizer_config.json")
    assert ours["pre_tokenizer"] == ("smollm" if smollm_digits else "gpt2")
    compare_ids(tok, corpus, ours, "tokenizer.json")
    check_round_trip(tok, corpus, ours["decoded"])


def test_rules_differ_where_expected(model_path, dump_bin, workdir, hf_smollm, hf_gpt2):
    # Guards the smollm correction: the two HF tokenizers (and our two rules) disagree on
    # whitespace before a digit, so the comparisons above cannot both pass by accident.
    text = ["a  1"]
    smollm = hf_smollm(text[0], add_special_tokens=False)["input_ids"]
    gpt2 = hf_gpt2(text[0], add_special_tokens=False)["input_ids"]
    assert smollm != gpt2
    ours = run_dump(dump_bin, workdir, text, "--model", model_path)
    assert ours["ids"][0] == smollm


@pytest.mark.parametrize("rule", RULES)
def test_pre_tokenizer_equals_regex_and_hf(rule, corpus, dump_bin, workdir):
    ours = run_dump(dump_bin, workdir, corpus, "--pre", rule)["pieces"]
    hf = hf_pre_tokenizer(rule)
    failures = []
    for i, text in enumerate(corpus):
        want = regex_pieces(rule, text)
        if ours[i] != want:
            failures.append(f"[{rule}] string {i} {text!r}\n  regex: {want}\n  ours : {ours[i]}")
        hf_want = hf_pieces(hf, text)
        if ours[i] != hf_want:
            failures.append(f"[{rule}] string {i} {text!r}\n  hf   : {hf_want}\n  ours : {ours[i]}")
    assert not failures, f"{len(failures)} mismatches; first ones:\n" + "\n".join(failures[:8])


# ---- chat templates ----

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Hi, how can I help?"},
     {"role": "user", "content": "Tell me a joke.\nA short one."}],
    [{"role": "system", "content": "  Be kind.  \n"},
     {"role": "user", "content": "\n  padded question?  \t"},
     {"role": "assistant", "content": " 42 "}],
    [{"role": "user", "content": "unicode: 你好 🎉 <|im_start|> inside"}],
    [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "ok"}],
    [{"role": "user", "content": ""}],
]

# Public templates of other families, rendered through a small tokenizer.json of ours.
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")


def jinja_render(template: str, messages, add_generation_prompt: bool, bos: str, eos: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # The environment transformers' apply_chat_template uses.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages,
                                            add_generation_prompt=add_generation_prompt,
                                            bos_token=bos, eos_token=eos)


def chat_cases():
    return [{"messages": m, "add_generation_prompt": g} for m in CONVERSATIONS for g in (False, True)]


def check_chat(rendered, template, bos, eos):
    cases = chat_cases()
    assert len(rendered) == len(cases)
    for case, got in zip(cases, rendered):
        want = jinja_render(template, case["messages"], case["add_generation_prompt"], bos, eos)
        assert got == want, f"conversation {case}\n  jinja: {want!r}\n  ours : {got!r}"


def test_chat_template_of_model_equals_jinja(model_path, gguf_fields, dump_bin, workdir):
    fields = gguf_fields
    template = fields["tokenizer.chat_template"].contents()
    tokens = fields["tokenizer.ggml.tokens"].contents()
    bos = tokens[fields["tokenizer.ggml.bos_token_id"].contents()]
    eos = tokens[fields["tokenizer.ggml.eos_token_id"].contents()]
    assert "You are a helpful AI assistant named SmolLM" in template
    ours = run_dump(dump_bin, workdir, [], "--model", model_path, chat=chat_cases())
    check_chat(ours["chat"], template, bos, eos)
    # The default system message is inserted exactly when the first message is not a system one.
    assert "SmolLM" in ours["chat"][0] and "SmolLM" not in ours["chat"][2]


def tiny_tokenizer_json(path: pathlib.Path, specials: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(byte_chars))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.add_special_tokens(specials)
    tok.save(str(path))


@pytest.mark.parametrize("family", ["qwen2", "llama3"])
def test_other_chat_templates_equal_jinja(family, dump_bin, workdir):
    if family == "qwen2":
        template, bos, eos = QWEN2_TEMPLATE, "", "<|im_end|>"
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    else:
        template, bos, eos = LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>"
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                    "<|end_header_id|>", "<|eot_id|>"]
    tj = workdir / f"{family}_tokenizer.json"
    tiny_tokenizer_json(tj, specials)
    config = {"chat_template": template, "eos_token": eos}
    if bos:
        config["bos_token"] = bos
    cj = workdir / f"{family}_tokenizer_config.json"
    cj.write_text(json.dumps(config), encoding="utf-8")
    ours = run_dump(dump_bin, workdir, [], "--model", tj, "--config", cj, chat=chat_cases())
    check_chat(ours["chat"], template, bos, eos)


def test_chat_rejects_bad_conversations(model_path, dump_bin, workdir):
    bad = [{"messages": [], "add_generation_prompt": True},
           {"messages": [{"role": "robot", "content": "beep"}], "add_generation_prompt": False}]
    ours = run_dump(dump_bin, workdir, [], "--model", model_path, chat=bad)
    assert all(isinstance(r, dict) and "INVALID_ARGUMENT" in r["error"] for r in ours["chat"])
