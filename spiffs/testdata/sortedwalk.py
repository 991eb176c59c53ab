# Runs spiffsgen.py unchanged, except that os.walk visits the entries of every
# directory in sorted order (files first, then subdirectories, as os.walk
# always does), so that its output does not depend on the order in which the
# file system happens to list a directory.
#
# usage: python3 sortedwalk.py PATH/TO/spiffsgen.py SIZE DIR OUT [flags]
import os
import runpy
import sys

_walk = os.walk


def sorted_walk(top, *args, **kwargs):
    for root, dirs, files in _walk(top, *args, **kwargs):
        dirs.sort()
        files.sort()
        yield root, dirs, files


os.walk = sorted_walk
tool = sys.argv[1]
sys.argv = [tool] + sys.argv[2:]
runpy.run_path(tool, run_name='__main__')
