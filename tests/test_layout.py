"""The tree shows the trust boundary, and the code keeps to it.

harness/sandboxed/ (and harness/contract.py, the participant's API) run inside a participant's
sandbox; every other module of harness/ runs in the trusted parent. A module is on one side only:
the sandboxed side imports nothing of the parent's authority, and the parent imports nothing that
runs participant code (it starts it only as a separate, sandboxed process).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "harness"
SANDBOXED = sorted((PACKAGE / "sandboxed").glob("*.py")) + [PACKAGE / "contract.py"]
TRUSTED = sorted(p for p in PACKAGE.glob("*.py") if p.name != "contract.py")


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def harness_imports(path: Path) -> set[str]:
    return {m for m in imported_modules(path) if m == "harness" or m.startswith("harness.")}


def test_the_sandboxed_side_imports_only_the_contract_and_itself() -> None:
    for path in SANDBOXED:
        for module in harness_imports(path):
            assert module.startswith(("harness.contract", "harness.sandboxed")), f"{path.name} imports {module}"


def test_the_trusted_side_never_imports_participant_side_code() -> None:
    for path in TRUSTED:
        for module in harness_imports(path):
            assert not module.startswith(("harness.contract", "harness.sandboxed")), f"{path.name} imports {module}"


def test_only_the_sandboxed_loader_imports_entry_files() -> None:
    for path in [*TRUSTED, *SANDBOXED]:
        text = path.read_text()
        if "spec_from_file_location" in text or "exec_module" in text or "runpy" in text:
            assert path == PACKAGE / "sandboxed" / "loader.py", path.name


def test_every_process_on_participant_code_starts_through_the_sandbox() -> None:
    """A trusted module naming a sandboxed entry point starts it with start_sandboxed, nothing else."""
    starters = []
    for path in TRUSTED:
        text = path.read_text()
        if "harness.sandboxed." in text:
            starters.append(path.name)
            assert "start_sandboxed(" in text, path.name
            assert "subprocess.Popen" not in text and "os.fork" not in text and "multiprocessing" not in text, path.name
    assert starters == ["execution.py"]  # one place builds every sandboxed process (SandboxedChild)
    popen = [p.name for p in TRUSTED if "subprocess.Popen(" in p.read_text()]
    assert popen == ["sandbox.py"]
