import pytest

from personal_nlf.config import ConfigError, Params, load_params


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_repo_params_are_valid():
    params = load_params("params.yaml")
    assert params.retrieval.k >= 1
    assert params.models.policy.backend in ("hf", "vllm", "openai")


def test_defaults_without_file_sections(tmp_path):
    assert load_params(write(tmp_path, "seed: 3\n")).seed == 3


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "seeed: 3\n")
    with pytest.raises(ConfigError) as e:
        load_params(p)
    assert "seeed" in str(e.value) and str(p) in str(e.value) and "unknown key" in str(e.value)


def test_unknown_nested_key(tmp_path):
    with pytest.raises(ConfigError, match=r"retrieval\.kk"):
        load_params(write(tmp_path, "retrieval:\n  kk: 3\n"))


def test_unknown_role_key(tmp_path):
    with pytest.raises(ConfigError, match=r"models\.policy\.temprature"):
        load_params(write(tmp_path, "models:\n  policy:\n    temprature: 0.1\n"))


def test_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match=r"retrieval\.k"):
        load_params(write(tmp_path, "retrieval:\n  k: ten\n"))


def test_bad_backend_value(tmp_path):
    with pytest.raises(ConfigError, match=r"models\.judge\.backend"):
        load_params(write(tmp_path, "models:\n  judge:\n    backend: llamafile\n"))


def test_unknown_split(tmp_path):
    with pytest.raises(ConfigError, match="unknown split"):
        load_params(write(tmp_path, "data:\n  splits: [train, dev]\n"))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_frozen():
    p = Params()
    with pytest.raises(Exception):
        p.seed = 1
