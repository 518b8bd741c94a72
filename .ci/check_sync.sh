#!/usr/bin/env bash
# Fail if nbdev-clean, nbdev-export or the README build change the working tree (notebooks not clean,
# package not exported, README not regenerated). Outside a git checkout there is nothing to compare.
set -euo pipefail
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "check_sync: not a git checkout; skipped"; exit 0
fi
snapshot() {
  git status --porcelain --untracked-files=all
  git diff HEAD
  git ls-files --others --exclude-standard -z | xargs -0 -r sha1sum
}
before=$(snapshot | sha1sum)
nbdev-clean
nbdev-export
jupyter nbconvert --to markdown --log-level WARN --stdout nbs/index.ipynb > README.md
after=$(snapshot | sha1sum)
if [ "$before" != "$after" ]; then
  echo "check_sync: nbdev-clean / nbdev-export / the README build changed files:" >&2
  git status --short >&2
  echo "Commit the result (run 'make readme', 'nbdev-clean', 'nbdev-export')." >&2
  exit 1
fi
echo "check_sync: notebooks clean, package exported, README in sync"
