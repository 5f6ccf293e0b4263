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


@pytest.mark.parametrize("text, named", [
    ("retrieval:\n  kk: 3\n", r"retrieval\.kk"),                             # unknown nested key
    ("models:\n  policy:\n    temprature: 0.1\n", r"models\.policy\.temprature"),  # unknown role key
    ("retrieval:\n  k: ten\n", r"retrieval\.k"),                              # wrong type
    ("models:\n  judge:\n    backend: llamafile\n", r"models\.judge\.backend"),  # bad backend value
    ("data:\n  splits: [train, dev]\n", "unknown split"),
    ("mode: summary\n", "pipelines/summary/dvc.yaml"),  # summary mode is its own pipeline now
    # A reward read from the generator's likelihoods, on a backend that has none: refused up front.
    ("summary:\n  reward: popi\nmodels:\n  generator:\n    backend: openai\n",
     r"summary\.reward=popi .*models\.generator\.backend to one of hf, vllm"),
])
def test_a_bad_value_is_refused_naming_its_key(tmp_path, text, named):
    with pytest.raises(ConfigError, match=named):
        load_params(write(tmp_path, text))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_frozen():
    p = Params()
    with pytest.raises(Exception):
        p.seed = 1


def test_likelihood_rewards_accept_the_backends_that_score_answers():
    for backend in ("hf", "vllm"):
        Params.model_validate({"summary": {"reward": "popi"}, "models": {"generator": {"backend": backend}}})
    Params.model_validate({"summary": {"reward": "judge"}, "models": {"generator": {"backend": "openai"}}})
