"""The layout of the test suite itself: tests/X/ holds the tests of src/fouriscale/X/ without shadowing an installed
package of the same name (tests/diffusers/ is not ``diffusers``), and every test module has a name of its own (test
folders are not packages, so pytest imports their modules by file name)."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Folders that are packages (tests/support/, tests/comfyui/): their modules import as ``folder.module``.
PACKAGES = {path.parent for path in TESTS.rglob("__init__.py")}


def test_the_test_folders_shadow_no_installed_package():
    import diffusers

    origin = Path(diffusers.__file__).resolve()
    assert TESTS not in origin.parents and origin.parts[-2:] == ("diffusers", "__init__.py"), origin
    assert not (TESTS / "diffusers" / "__init__.py").exists()
    # With tests/ first on the path, as in the command-line processes the tests start (PYTHONPATH), too.
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('diffusers').origin)"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(TESTS)},
        timeout=60,
    )
    assert found.returncode == 0 and Path(found.stdout.strip()).resolve() == origin, found


def test_every_test_module_has_a_name_of_its_own():
    names = Counter(p.stem for p in TESTS.rglob("*.py") if p.parent not in PACKAGES and p.stem != "conftest")
    assert [name for name, n in names.items() if n > 1] == []
