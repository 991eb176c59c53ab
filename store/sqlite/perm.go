package sqlite

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// privateFiles makes the database file owner-only before SQLite opens it,
// whatever the umask or the directory's mode: it holds every device's data
// and credentials. SQLite creates the -wal and -shm files with the
// database file's mode, so they follow. Files an earlier version left
// readable by others are tightened too.
func privateFiles(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		} else if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(p, 0o600); err != nil {
				return fmt.Errorf("making %s owner-only: %w", p, err)
			}
		}
	}
	return nil
}
