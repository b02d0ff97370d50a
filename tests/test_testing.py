"""The offline stand-ins for real models (fouriscale/testing.py) as the README shows them."""

import fouriscale


def test_the_readme_tiny_models_example_runs(capsys):
    """The README's Python example of the tiny pipelines and ControlNet (fouriscale.testing), as written there."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    code = re.search(r"<!-- tiny-api: run by tests/test_testing.py -->\n```python\n(.*?)```", readme, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["image"].size == (96, 96) and fouriscale.is_fouriscale_applied(scope["control"])
    assert "FouriScale plan: Stable Diffusion 1.x at 96x96" in capsys.readouterr().out
