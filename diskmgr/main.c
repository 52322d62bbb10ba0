/* kbox-diskmgr: the operator's handle on worker disks (create, attach, detach, destroy, list,
 * gc). A thin shell over the kbox_diskmgr library: parse, call, report. Results go to stdout
 * as plain lines; failures go to stderr as JSON log lines like the rest of kbox, and the exit
 * code says which kind of failure it was (see cli.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "diskmgr.h"
#include "log.h"

#define MODULE "diskmgr"

static int report(const char *what, const char *name, int r) {
    if (r < 0)
        log_error(MODULE, what, "{s:s, s:s, s:i}", "disk", name ? name : "", "error", strerror(-r),
                  "errno", -r);
    return disk_cli_exit_code(r);
}

static void print_info(const disk_info_t *d) {
    printf("%-24s %8llu %8llu %-8s %-12s %s\n", d->name, (unsigned long long)(d->size_bytes >> 20),
           (unsigned long long)(d->alloc_bytes >> 20), d->mounted ? "mounted" : "detached",
           d->loop_dev[0] ? d->loop_dev : "-", d->mount_path);
}

static int run(disk_mgr_t *mgr, const disk_cli_t *c) {
    disk_info_t info;
    int r;
    switch (c->cmd) {
    case DISK_CMD_CREATE:
        r = disk_mgr_create(mgr, c->name, c->size_mb, c->uid, c->gid, &info);
        if (r >= 0)
            printf("%s\n", info.mount_path);
        return report("create failed", c->name, r);
    case DISK_CMD_ATTACH:
        r = disk_mgr_attach(mgr, c->name, c->owner_set ? c->uid : DISK_KEEP_OWNER,
                            c->owner_set ? c->gid : (gid_t)-1, &info);
        if (r >= 0)
            printf("%s\n", info.mount_path);
        return report("attach failed", c->name, r);
    case DISK_CMD_DETACH:
        r = disk_mgr_detach(mgr, c->name);
        if (r == 1)
            log_warn(MODULE, "disk busy: unmounted lazily", "{s:s}", "disk", c->name);
        return report("detach failed", c->name, r);
    case DISK_CMD_DESTROY:
        r = disk_mgr_remove(mgr, c->name);
        if (r == 1)
            log_warn(MODULE, "disk busy: unmounted lazily", "{s:s}", "disk", c->name);
        return report("destroy failed", c->name, r);
    case DISK_CMD_LIST: {
        disk_info_t *list;
        size_t n;
        r = disk_mgr_list(mgr, &list, &n);
        if (r < 0)
            return report("list failed", NULL, r);
        printf("%-24s %8s %8s %-8s %-12s %s\n", "NAME", "SIZE_MB", "ALLOC_MB", "STATE", "LOOP",
               "MOUNT");
        for (size_t i = 0; i < n; i++)
            print_info(&list[i]);
        free(list);
        return DISK_EXIT_OK;
    }
    case DISK_CMD_GC: {
        disk_gc_stats_t st;
        r = disk_mgr_gc(mgr, c->keep, c->nkeep, &st);
        printf("mounts=%u loops=%u images=%u dirs=%u failed=%u\n", st.mounts, st.loops, st.images,
               st.dirs, st.failed);
        return report("gc incomplete", NULL, r);
    }
    case DISK_CMD_NONE:
        break;
    }
    return DISK_EXIT_USAGE;
}

int main(int argc, char **argv) {
    static disk_cli_t c; /* static: the keep list makes it large for a stack */
    char err[256];
    if (disk_cli_parse(argc, argv, &c, err, sizeof err) < 0) {
        fprintf(stderr, "kbox-diskmgr: %s\n%s", err, disk_cli_usage);
        return DISK_EXIT_USAGE;
    }
    if (c.help) {
        fputs(disk_cli_usage, stdout);
        return DISK_EXIT_OK;
    }
    disk_mgr_config_t cfg;
    disk_mgr_config_init(&cfg);
    cfg.images_dir = c.images_dir;
    cfg.mounts_dir = c.mounts_dir;
    if (c.mkfs_path)
        cfg.mkfs_path = c.mkfs_path;
    if (c.reserve_set)
        cfg.reserve_mb = c.reserve_mb;
    if (c.no_direct_io)
        cfg.direct_io = false;
    disk_mgr_t *mgr = NULL;
    int r = disk_mgr_new(&cfg, &mgr);
    if (r < 0)
        return report("cannot use the disk directories", NULL, r);
    int code = run(mgr, &c);
    disk_mgr_destroy(&mgr);
    return code;
}
