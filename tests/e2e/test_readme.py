"""The README's curl walk-through, run verbatim against a real `percept serve`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Service

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- walkthrough:start -->\n```sh\n(.*?)```\n<!-- walkthrough:end -->", text, re.DOTALL
    )
    assert match, "README lost its walk-through markers"
    return match.group(1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="the walk-through uses curl")
def test_readme_walkthrough_runs(served: Service, tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to(served.data_dir)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PERCEPT_URL": served.url, "PERCEPT_KEY": served.key}
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthrough()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    output = result.stdout
    assert '"id": "digits"' in output and '"id": "faces"' in output
    assert output.count('"status": "success"') == 4, output  # digit, face, deployment, own version
    assert '"label_name": "face"' in output and '"roi"' in output
    assert output.count('"label_name": "7"') >= 2, output
    assert '"discarded": [{' in output  # show_discarded on the last call
