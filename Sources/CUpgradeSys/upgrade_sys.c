#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <unistd.h>
#include "upgrade_sys.h"

int upgrade_rename_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, RENAME_NOREPLACE);
}

int upgrade_o_path(void) { return O_PATH; }

int upgrade_o_tmpfile(void) { return O_TMPFILE; }

int upgrade_syncfs(int fd) { return syncfs(fd); }

short upgrade_spawn_setsid_flag(void) { return POSIX_SPAWN_SETSID; }

int upgrade_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}
