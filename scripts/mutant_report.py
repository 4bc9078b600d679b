"""Print the kill rate of each mutated module after ``mutmut run``; write the survivors to a file.

Run by ``make mutants``. It reads mutmut's results under ``mutants/`` and rewrites
``mutants-survivors.txt`` at the repository's root: one line per surviving mutant,
``<name><TAB><why it is equivalent>``, under a header per module, so that
``.venv/bin/mutmut show <name>`` prints it. The reasons are kept from the file's previous
version for every mutant that still survives; a new survivor is marked ``UNEXPLAINED`` until a
test kills it or its line says why no test can. Exits 1 when any survivor is unexplained.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parent.parent
SURVIVORS = ROOT / "mutants-survivors.txt"
UNEXPLAINED = "UNEXPLAINED"


def known_reasons() -> dict[str, str]:
    """Each mutant's reason as the previous file gave it."""
    reasons = {}
    if SURVIVORS.is_file():
        for line in SURVIVORS.read_text().splitlines():
            name, _, reason = line.partition("\t")
            if name and not name.startswith("#") and reason and reason != UNEXPLAINED:
                reasons[name] = reason
    return reasons


def main() -> int:
    reasons = known_reasons()
    results: dict[str, Counter[str]] = {}
    survivors: dict[str, list[str]] = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not exit_codes:
            continue
        module = str(meta.relative_to(ROOT / "mutants")).removesuffix(".meta")
        counts = results.setdefault(module, Counter())
        for name, exit_code in sorted(exit_codes.items()):
            status = status_by_exit_code[exit_code]
            counts[status] += 1
            if status == "survived":
                survivors.setdefault(module, []).append(name)
    if not results:
        print("no mutmut results under mutants/: run `make mutants`", file=sys.stderr)
        return 1
    lines = [
        "# Surviving mutants of `make mutants`, by module: each with why no test can kill it.",
        "# Rewritten by scripts/mutant_report.py, which keeps these reasons;",
        "# `.venv/bin/mutmut show <name>` prints a mutant.",
    ]
    unexplained = 0
    for module, counts in results.items():
        total = sum(counts.values())
        checked = total - counts["not checked"]
        if not checked:
            print(f"{module}: not run ({total} mutants)")
            continue
        names = survivors.get(module, [])
        missing = [name for name in names if name not in reasons]
        unexplained += len(missing)
        # A mutant that makes its tests hang past mutmut's timeout was caught as surely as a failing one.
        killed = counts["killed"] + counts["timeout"]
        rate = killed / checked
        summary = (
            f"{module}: {killed} of {checked} mutants killed ({rate:.0%}); {len(names)} survived, "
            f"{len(names) - len(missing)} of them explained"
        )
        if counts["not checked"]:
            summary += f"; {counts['not checked']} outside make mutants"
        if counts["timeout"]:
            summary += f"; {counts['timeout']} of the killed by a timeout"
        others = sorted(set(counts) - {"killed", "timeout", "survived", "not checked"})
        if others:
            summary += "; " + ", ".join(f"{counts[status]} {status}" for status in others)
        print(summary)
        lines += ["", f"# {summary}"]
        lines += [f"{name}\t{reasons.get(name, UNEXPLAINED)}" for name in names]
    SURVIVORS.write_text("\n".join(lines) + "\n")
    print(f"{sum(map(len, survivors.values()))} survivors listed in {SURVIVORS.name}; {unexplained} unexplained")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
