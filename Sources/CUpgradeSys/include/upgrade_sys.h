// Linux calls the Swift Glibc module does not expose (they need _GNU_SOURCE), wrapped as plain
// functions so the header itself stays portable C. UpgradeScan and UpgradeApply import this module.
#ifndef UPGRADE_SYS_H
#define UPGRADE_SYS_H

#include <spawn.h>
#include <stddef.h>
#include <sys/types.h>

/// renameat2(..., RENAME_NOREPLACE): fails with EEXIST instead of replacing the target.
int upgrade_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);
/// The O_PATH open flag.
int upgrade_o_path(void);
/// The O_TMPFILE open flag (an unnamed file in a directory, linked in later).
int upgrade_o_tmpfile(void);
/// syncfs(2): flushes the filesystem holding fd.
int upgrade_syncfs(int fd);
/// The POSIX_SPAWN_SETSID flag (the child starts its own session and process group).
short upgrade_spawn_setsid_flag(void);
/// posix_spawn_file_actions_addchdir_np.
int upgrade_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path);

/// Extended attributes of a path, not following a final symlink (l*xattr).
ssize_t upgrade_llistxattr(const char *path, char *list, size_t size);
ssize_t upgrade_lgetxattr(const char *path, const char *name, void *value, size_t size);
int upgrade_lsetxattr(const char *path, const char *name, const void *value, size_t size);
int upgrade_lremovexattr(const char *path, const char *name);
/// mallopt: big allocations from the heap, freed memory kept for reuse (see Main.keepFreedMemory).
void upgrade_keep_freed_memory(void);

/// A descriptor that becomes readable when process `pid` (a child) exits; -1 where the kernel
/// has no pidfd_open (before Linux 5.3).
int upgrade_pidfd_open(int pid);
/// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE): frees the blocks of a range.
int upgrade_punch_hole(int fd, off_t offset, off_t length);

#endif
