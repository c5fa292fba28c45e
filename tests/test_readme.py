"""README.md as written: every ```bash and ```python block runs, in order, in one scratch folder,
with this environment's `engram-memory` on PATH, except the first block (it creates the environment
itself; CI runs its second line) and blocks marked `<!-- not run by tests: REASON -->` just above.
Servers a block starts in the background are stopped at the end. A block passes when it exits 0.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?:<!-- not run by tests: (?P<why>[^>]*?) -->\n)?```(?P<lang>bash|python)\n(?P<code>.*?)\n```",
                   re.S)


def blocks() -> list[tuple[int, str, str, str | None]]:
    found = [(i, m["lang"], m["code"], m["why"]) for i, m in enumerate(BLOCK.finditer(README.read_text()))]
    assert found and found[0][0] == 0 and "pip install" in found[0][2]  # the setup block comes first
    return found[1:]


def test_every_skipped_block_says_why():
    for index, _, code, why in blocks():
        if why is not None:
            assert len(why.strip()) > 10, f"block {index} is skipped without a reason: {code[:80]}"


# the blocks' tables: demo 2.5 GiB, two shards 2.5, the remote load 1.2, bench e2e's 2.5, bench service small
NEEDS_GIB = 12


def test_readme_runs_as_written(tmp_path):
    free_gib = shutil.disk_usage(tmp_path).free / 2**30
    if free_gib < NEEDS_GIB:
        pytest.skip(f"README's blocks write ~{NEEDS_GIB} GiB of tables; {tmp_path} has {free_gib:.1f} GiB free")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    groups = []
    try:
        for index, lang, code, why in blocks():
            if why is not None:
                continue
            args = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
            # output to a file, not a pipe: a server the block leaves in the background keeps its stdout open
            log = tmp_path / f"block-{index}.log"
            with open(log, "w") as out:
                proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # its background servers share its group
            groups.append(proc.pid)
            try:
                proc.wait(timeout=900)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(f"README block {index} ({lang}) did not finish in 15 min:\n{code}\n"
                            f"--- output:\n{log.read_text()[-3000:]}")
            assert proc.returncode == 0, (f"README block {index} ({lang}) failed:\n{code}\n"
                                          f"--- output:\n{log.read_text()[-4000:]}")
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in groups:
                try:
                    os.killpg(group, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 30
            while sig == signal.SIGTERM and time.monotonic() < deadline and any(_alive(g) for g in groups):
                time.sleep(0.5)


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False
