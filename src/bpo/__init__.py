"""bpo: online preference alignment with BPO (behavior-anchored DPO/IPO/SLiC) and LoRA ensembles."""

import functools

__version__ = "0.1.0"


@functools.cache  # the code this process loaded: asked again at a run's end, git would name a later commit
def code_version() -> str:
    """The code a result was made with: bpo's version and, installed from a git checkout, its commit
    (and a mark when src/ differs from it), so a published run can name what produced it."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return f"bpo {__version__}"

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30).stdout

    try:
        head, dirty = git("rev-parse", "--short=7", "HEAD").strip(), git("status", "--porcelain", "--", "src").strip()
    except (OSError, subprocess.SubprocessError):  # no git program
        head = ""
    if not head:  # the version alone
        return f"bpo {__version__}"
    return f"bpo {__version__} {head}" + (" +uncommitted changes in src/" if dirty else "")
