#!/bin/sh
# The cwo demo agent: a scripted stand-in for opencode. It reads the prompt cwo wrote and
# - blocks on anything that needs production credentials,
# - crashes on its first attempt at the changelog (cwo retries it),
# - otherwise writes a note named after the task and commits it.
set -eu
prompt_file="$1"
title=$(sed -n 's/^# //p' "$prompt_file" | head -n 1)
echo "demo agent: working on \"$title\" (attempt ${CWO_ATTEMPT:-1})"
case "$title" in
  *[Dd]eploy*)
    echo "BLOCKED: no production credentials on this worker"
    exit 0 ;;
  *[Cc]hangelog*)
    if [ "${CWO_ATTEMPT:-1}" = 1 ]; then
      echo "demo agent: simulated crash" >&2
      exit 3
    fi ;;
esac
note="notes/${CWO_TASK_ID}.md"
mkdir -p notes
printf '# %s\n\nDone by the cwo demo agent.\n' "$title" > "$note"
git add "$note"
git commit -q -m "${CWO_TASK_ID}: ${title}"
echo "demo agent: committed $note"
