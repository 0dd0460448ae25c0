"""`finetune import-model`: a GGUF file becomes a base-model folder the service offers.

Fast tests run the command's checks and its write-then-rename on a tiny GPT-2 standing in for what
transformers loads from a GGUF; the slow ones import the real SmolLM2-135M-Instruct once per session
and check the folder is a plain model whose weights are the file's, chat template included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.config import Settings
from app.ml import gguf_import
from app.ml.base_models import inspect_folder, list_base_models
from app.ml.gguf_import import GgufImportError, import_gguf
from tests.support import smollm2
from tests.support.smollm2 import needs_smollm2, smollm2_gguf_path
from tests.support.tiny_models import build_tiny_gpt2

smollm2_model = smollm2.smollm2_model  # the session fixture: SmolLM2 imported once


def _invoke(models_dir: Path, monkeypatch, *args: str):
    import app.config
    from app.cli import cli

    # The command reads the deployment's settings; point them at this test's models folder.
    monkeypatch.setattr(app.config, "get_settings", lambda: Settings(base_models_dir=models_dir))
    return CliRunner().invoke(cli, ["import-model", *map(str, args)])


def _fake_gguf(path: Path) -> Path:
    path.write_bytes(b"GGUF" + bytes(60))  # the magic, nothing a GGUF reader could parse
    return path


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture()
def fake_loader(monkeypatch, tiny_gpt2):
    """transformers' GGUF loading replaced by the tiny GPT-2, carrying the marks a GGUF load leaves
    (hf_quantizer, config.quantization_config): everything after the load is the real code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer

    def load(path, architecture):
        model = AutoModelForCausalLM.from_pretrained(tiny_gpt2)
        model.hf_quantizer = GgufHfQuantizer(GgufConfig(gguf_file=path.name))
        model.config.quantization_config = model.hf_quantizer.quantization_config
        model.is_quantized = True
        return model, AutoTokenizer.from_pretrained(tiny_gpt2)

    monkeypatch.setattr(gguf_import, "read_header", lambda path: ("gpt2", 20_000))
    monkeypatch.setattr(gguf_import, "_load", load)


def _staging_left(models_dir: Path) -> list[str]:
    return [p.name for p in models_dir.iterdir() if p.name.startswith(".importing-")]


# ---- checks before any loading -------------------------------------------------------------------

def test_a_file_that_is_not_gguf_is_refused(tmp_path, monkeypatch):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text('{"this": "is json"}')
    result = _invoke(tmp_path / "models", monkeypatch, not_gguf, "--name", "org/model")
    assert result.exit_code == 2, result.output
    assert "is not a GGUF file" in result.output

    result = _invoke(tmp_path / "models", monkeypatch, tmp_path / "missing.gguf", "--name", "org/model")
    assert result.exit_code == 2 and "no such file" in result.output


@pytest.mark.parametrize("name", ["../x", "/abs", "org/../x", "a/b/c", "..", ".hidden", "org/.x", "", "a b",
                                  "org/", "x" * 97])
def test_bad_names_are_refused(tmp_path, monkeypatch, name):
    result = _invoke(tmp_path / "models", monkeypatch, _fake_gguf(tmp_path / "m.gguf"), "--name", name)
    assert result.exit_code == 2, result.output
    assert "invalid model name" in result.output
    assert not (tmp_path / "models").exists()


def test_good_names_pass():
    for name in ("smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct", "org_1/model.v2-q4"):
        assert gguf_import.validate_name(name) == name


def test_an_existing_model_is_not_overwritten_without_force(tmp_path, monkeypatch):
    existing = tmp_path / "models" / "org" / "model"
    existing.mkdir(parents=True)
    (existing / "config.json").write_text("{}")
    result = _invoke(tmp_path / "models", monkeypatch, _fake_gguf(tmp_path / "m.gguf"), "--name", "org/model")
    assert result.exit_code == 2, result.output
    assert "already exists" in result.output and "--force" in result.output
    assert (existing / "config.json").read_text() == "{}"


def test_an_unknown_dtype_is_refused(tmp_path):
    with pytest.raises(GgufImportError, match="dtype"):
        import_gguf(_fake_gguf(tmp_path / "m.gguf"), "m", tmp_path, dtype="int4")


def test_an_architecture_transformers_cannot_read_is_named(tmp_path, monkeypatch):
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "notanarch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = _invoke(tmp_path / "models", monkeypatch, path, "--name", "odd")
    assert result.exit_code == 2, result.output
    assert "cannot load GGUF architecture 'notanarch'" in result.output
    assert not (tmp_path / "models" / "odd").exists() and not _staging_left(tmp_path / "models")


def test_a_truncated_gguf_is_refused(tmp_path, monkeypatch):
    result = _invoke(tmp_path / "models", monkeypatch, _fake_gguf(tmp_path / "m.gguf"), "--name", "m")
    assert result.exit_code == 2, result.output
    assert "cannot be read as GGUF" in result.output


# ---- writing: plain weights, atomic rename, --force ---------------------------------------------

def test_cli_writes_a_plain_usable_folder(tmp_path, monkeypatch, fake_loader):
    models = tmp_path / "models"
    result = _invoke(models, monkeypatch, _fake_gguf(tmp_path / "m.gguf"), "--name", "org/model")
    assert result.exit_code == 0, result.output
    folder = models / "org" / "model"
    assert str(folder) in result.output and "Model id: org/model" in result.output
    config = json.loads((folder / "config.json").read_text())
    # Without the stripping, save_pretrained refuses ("not serializable") or writes quant_method gguf.
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert inspect_folder("org/model", folder).usable
    assert (folder / "generation_config.json").is_file()
    assert not _staging_left(models)


def test_bfloat16_halves_the_weights(tmp_path, fake_loader):
    from safetensors import safe_open

    folder = import_gguf(_fake_gguf(tmp_path / "m.gguf"), "m", tmp_path, dtype="bfloat16")
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        names = handle.keys()
        assert {str(handle.get_tensor(name).dtype) for name in names} == {"torch.bfloat16"}


def test_force_replaces_and_a_failed_import_changes_nothing(tmp_path, monkeypatch, fake_loader):
    gguf_file = _fake_gguf(tmp_path / "m.gguf")
    folder = import_gguf(gguf_file, "org/model", tmp_path)
    (folder / "marker").write_text("old")

    def broken(*args):
        raise GgufImportError("disk full, say")

    with monkeypatch.context() as patch:  # a failure after saving: the old model stays, nothing half-written
        patch.setattr(gguf_import, "_check_written", broken)
        with pytest.raises(GgufImportError, match="disk full"):
            import_gguf(gguf_file, "org/model", tmp_path, force=True)
    assert (folder / "marker").read_text() == "old"
    assert not _staging_left(tmp_path)

    assert import_gguf(gguf_file, "org/model", tmp_path, force=True) == folder
    assert not (folder / "marker").exists() and inspect_folder("org/model", folder).usable
    assert not _staging_left(tmp_path)


# ---- the real model -------------------------------------------------------------------------------

@pytest.mark.slow
@needs_smollm2
def test_smollm2_import_is_a_plain_model_with_its_chat_template(smollm2_model):
    model_id, _, folder = smollm2_model
    found = inspect_folder(model_id, folder)
    assert found.usable and found.model_type == "llama", found.problem
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert not list(folder.glob("*.gguf")) and (folder / "generation_config.json").is_file()
    template = (folder / "chat_template.jinja").read_text() if (folder / "chat_template.jinja").is_file() \
        else json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    assert "<|im_start|>" in template and "add_generation_prompt" in template  # SmolLM2's ChatML
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    assert tokenizer_config["model_max_length"] == config["max_position_embeddings"] == 8192


@pytest.mark.slow
@needs_smollm2
def test_smollm2_weights_are_the_files_dequantized_values(smollm2_model):
    """Bit for bit: tensors transformers saves without reordering (llama's q/k are permuted)."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    _, _, folder = smollm2_model
    tensors = {t.name: t for t in gguf.GGUFReader(smollm2_gguf_path()).tensors}
    with safe_open(str(folder / "model.safetensors"), framework="np") as saved:
        for gguf_name, hf_name in [("token_embd.weight", "model.embed_tokens.weight"),  # Q8_0
                                   ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),  # Q4_1
                                   ("blk.29.attn_v.weight", "model.layers.29.self_attn.v_proj.weight")]:
            tensor = tensors[gguf_name]
            expected = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            assert np.array_equal(saved.get_tensor(hf_name), expected), gguf_name


@pytest.mark.slow
@needs_smollm2
def test_smollm2_reloaded_knows_the_capital_of_france(smollm2_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, _, folder = smollm2_model
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    text = tokenizer.decode(model.generate(**inputs, max_new_tokens=8, do_sample=False)[0])
    assert "Paris" in text, text
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)
    answer = model.generate(**chat, max_new_tokens=12, do_sample=False)[0][chat["input_ids"].shape[1]:]
    assert "Paris" in tokenizer.decode(answer), tokenizer.decode(answer)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_is_listed_as_a_base_model(smollm2_model):
    model_id, models_dir, folder = smollm2_model
    listed = list_base_models(Settings(base_models_dir=models_dir, bundled_models=False))
    assert list(listed) == [model_id]
    assert listed[model_id].usable and listed[model_id].path.resolve() == folder.resolve()
