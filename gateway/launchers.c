/* Chooses the launcher named by the configuration. */
#include "gw.h"
#include "log.h"
#include "util.h"

launcher_t *gw_launcher_from_config(const gw_config_t *cfg) {
    if (streq(cfg->launcher, "process")) {
        log_warn("gateway", "UNSANDBOXED process launcher: for development only", NULL);
        return launcher_process_new();
    }
    log_error("gateway", "launcher not available in this build", "{s:s}", "launcher",
              cfg->launcher);
    return NULL;
}
