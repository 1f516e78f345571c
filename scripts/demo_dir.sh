#!/bin/sh
# Run directories that the Makefile's demos own, marked by a file written when make creates them.
# make deletes only marked directories, so a run of the user's own under the same name survives.
#   scripts/demo_dir.sh fresh DIR...    every DIR absent or marked: each emptied and marked;
#                                       any other DIR: an error (exit 2) and nothing deleted
#   scripts/demo_dir.sh remove DIR...   marked DIRs removed; others kept and named
set -eu
MARK=.made-by-make
[ $# -ge 1 ] || { echo "usage: $0 fresh|remove DIR..." >&2; exit 2; }
cmd=$1
shift
owned() { [ -d "$1" ] && [ ! -L "$1" ] && [ -f "$1/$MARK" ] && [ ! -L "$1/$MARK" ]; }
case $cmd in
fresh)
    for d in "$@"; do
        if { [ -e "$d" ] || [ -L "$d" ]; } && ! owned "$d"; then
            echo "error: $d exists and was not made by make: move it away or delete it" \
                "yourself, then run make again (nothing was deleted)" >&2
            exit 2
        fi
    done
    for d in "$@"; do
        rm -rf -- "$d"
        mkdir -p -- "$d"
        : >"$d/$MARK"
    done
    ;;
remove)
    for d in "$@"; do
        if owned "$d"; then
            rm -rf -- "$d"
        elif [ -e "$d" ] || [ -L "$d" ]; then
            echo "kept $d (not made by make)"
        fi
    done
    ;;
*)
    echo "usage: $0 fresh|remove DIR..." >&2
    exit 2
    ;;
esac
