# Sourced by the bench scripts. With NICE set (e.g. NICE=-10): RUN=(nice -n $NICE) to prefix
# commands with, and this session's autogroup niceness set to it until the script exits (under the
# autogroup scheduler, per-process nice alone does not outweigh other sessions' load).
RUN=()
if [ -n "${NICE:-}" ]; then
  RUN=(nice -n "$NICE")
  if [ -w /proc/self/autogroup ]; then
    was=$(sed -n 's/.* nice //p' /proc/self/autogroup)
    trap 'echo "$was" >/proc/self/autogroup' EXIT
    echo "$NICE" >/proc/self/autogroup
  fi
fi
