/* Aggregation of one execution's iopub output under a byte budget (see exec_out.h). */
#include "exec_out.h"
#include "util.h"

#define TRUNC_MARKER "\n[output truncated]\n"

struct exec_out {
    size_t max_bytes;
    size_t used;
    bool truncated;
    bool text_cut; /* the marker was appended: later text is discarded */
    bool clear_pending;
    json_t *outputs; /* array of output objects */
    json_t *error;   /* {ename, evalue, traceback} or NULL */
    json_t *execution_count;
    json_t *last_png; /* the last image/png string seen (own reference) */
};

exec_out_t *exec_out_new(size_t max_bytes) {
    exec_out_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->max_bytes = max_bytes;
    self->outputs = json_array();
    self->execution_count = json_null();
    if (!self->outputs) {
        exec_out_destroy(&self);
        return NULL;
    }
    return self;
}

void exec_out_destroy(exec_out_t **self_p) {
    exec_out_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    *self_p = NULL;
    json_decref(self->outputs);
    json_decref(self->error);
    json_decref(self->execution_count);
    json_decref(self->last_png);
    free(self);
}

char *exec_strip_ansi(char *s) {
    char *r = s, *w = s;
    while (*r) {
        if (r[0] == '\x1b' && r[1] == '[') {
            r += 2;
            while (*r && !((*r >= '@' && *r <= '~')))
                r++;
            if (*r)
                r++;
            continue;
        }
        *w++ = *r++;
    }
    *w = '\0';
    return s;
}

static size_t data_size(const json_t *data) {
    size_t n = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)data, k, v) {
        n += strlen(k) + 8;
        if (json_is_string(v))
            n += json_string_length(v);
        else
            n += 64; /* JSON-valued MIME types are small in practice; dumps would cost more */
    }
    return n;
}

static void apply_clear(exec_out_t *self) {
    json_array_clear(self->outputs);
    json_decref(self->last_png);
    self->last_png = NULL;
    self->clear_pending = false;
}

/* Append stream text, merging with a previous chunk of the same stream. */
static json_t *feed_stream(exec_out_t *self, const json_t *content) {
    const char *name = json_string_value(json_object_get(content, "name"));
    json_t *jtext = json_object_get(content, "text");
    if (!name || !json_is_string(jtext))
        return NULL;
    if (!streq(name, "stdout") && !streq(name, "stderr"))
        return NULL;
    if (self->text_cut) {
        self->truncated = true;
        return NULL;
    }
    const char *text = json_string_value(jtext);
    size_t len = json_string_length(jtext);
    size_t room = self->used < self->max_bytes ? (self->max_bytes - self->used) / 2 : 0;
    _cleanup_free_ char *kept = NULL;
    size_t keep = len;
    if (len > room) {
        /* Cut on a UTF-8 boundary so the JSON stays valid text. */
        keep = room > strlen(TRUNC_MARKER) ? room - strlen(TRUNC_MARKER) : 0;
        while (keep > 0 && ((unsigned char)text[keep] & 0xC0) == 0x80)
            keep--;
        kept = malloc(keep + sizeof TRUNC_MARKER);
        if (!kept)
            return NULL;
        memcpy(kept, text, keep);
        memcpy(kept + keep, TRUNC_MARKER, sizeof TRUNC_MARKER);
        self->truncated = true;
        self->text_cut = true;
        keep += strlen(TRUNC_MARKER);
    }
    const char *piece = kept ? kept : text;
    self->used += 2 * keep;
    size_t n = json_array_size(self->outputs);
    json_t *last = n ? json_array_get(self->outputs, n - 1) : NULL;
    if (last && streq(json_string_value(json_object_get(last, "type")), "stream") &&
        streq(json_string_value(json_object_get(last, "name")), name)) {
        json_t *old = json_object_get(last, "text");
        size_t olen = json_string_length(old);
        char *joined = malloc(olen + keep + 1);
        if (!joined)
            return NULL;
        memcpy(joined, json_string_value(old), olen);
        memcpy(joined + olen, piece, keep);
        joined[olen + keep] = '\0';
        json_object_set_new(last, "text", json_stringn_nocheck(joined, olen + keep));
        free(joined);
    } else {
        json_array_append_new(self->outputs, json_pack("{s:s,s:s,s:s%}", "type", "stream", "name",
                                                       name, "text", piece, keep));
    }
    return json_pack("{s:s,s:s,s:s%}", "type", "stream", "name", name, "text", piece, keep);
}

static const char *display_id_of(const json_t *content) {
    return json_string_value(json_object_get(json_object_get(content, "transient"), "display_id"));
}

static json_t *feed_rich(exec_out_t *self, const char *msg_type, const json_t *content) {
    json_t *data = json_object_get(content, "data");
    if (!json_is_object(data))
        return NULL;
    json_t *metadata = json_object_get(content, "metadata");
    bool is_result = streq(msg_type, "execute_result");
    bool is_update = streq(msg_type, "update_display_data");
    const char *display_id = display_id_of(content);

    size_t size = data_size(data);
    if (self->used + size > self->max_bytes) {
        self->truncated = true;
        return NULL;
    }
    self->used += size;

    json_t *out = json_pack("{s:s,s:O,s:O}", "type", is_result ? "result" : "display", "data", data,
                            "metadata", json_is_object(metadata) ? metadata : json_object());
    if (!out)
        return NULL;
    if (is_result)
        json_object_set(out, "execution_count", json_object_get(content, "execution_count"));
    if (display_id)
        json_object_set_new(out, "display_id", json_string(display_id));

    if (is_update) {
        if (!display_id) {
            json_decref(out);
            return NULL;
        }
        json_object_set_new(out, "update", json_true());
        size_t i;
        json_t *o;
        json_array_foreach(self->outputs, i, o) {
            if (streq(json_string_value(json_object_get(o, "display_id")), display_id)) {
                json_object_set(o, "data", data);
                json_object_set(o, "metadata", json_object_get(out, "metadata"));
            }
        }
    } else {
        json_array_append(self->outputs, out);
    }
    json_t *png = json_object_get(data, "image/png");
    if (json_is_string(png)) {
        json_decref(self->last_png);
        self->last_png = json_incref(png);
    }
    return out;
}

/* {ename, evalue, traceback} of an `error` message or an error reply, the traceback's
 * terminal colours stripped. */
static json_t *error_object(const json_t *content) {
    json_t *tb = json_array();
    size_t i;
    json_t *line;
    json_array_foreach(json_object_get(content, "traceback"), i, line) {
        if (!json_is_string(line))
            continue;
        char *copy = strdup(json_string_value(line));
        if (!copy)
            continue;
        json_array_append_new(tb, json_string(exec_strip_ansi(copy)));
        free(copy);
    }
    const char *ename = json_string_value(json_object_get(content, "ename"));
    const char *evalue = json_string_value(json_object_get(content, "evalue"));
    return json_pack("{s:s,s:s,s:o}", "ename", ename ? ename : "Error", "evalue",
                     evalue ? evalue : "", "traceback", tb);
}

json_t *exec_out_feed(exec_out_t *self, const char *msg_type, const json_t *content) {
    if (!self || !msg_type || !json_is_object(content))
        return NULL;
    if (streq(msg_type, "clear_output")) {
        if (json_is_true(json_object_get(content, "wait")))
            self->clear_pending = true;
        else
            apply_clear(self);
        return json_pack("{s:s,s:b}", "type", "clear", "wait",
                         json_is_true(json_object_get(content, "wait")));
    }
    bool is_output = streq(msg_type, "stream") || streq(msg_type, "display_data") ||
                     streq(msg_type, "execute_result") || streq(msg_type, "update_display_data");
    if (is_output && self->clear_pending)
        apply_clear(self);
    if (streq(msg_type, "stream"))
        return feed_stream(self, content);
    if (is_output)
        return feed_rich(self, msg_type, content);
    if (streq(msg_type, "error")) {
        json_decref(self->error);
        self->error = error_object(content);
        json_t *ev = json_deep_copy(self->error);
        json_object_set_new(ev, "type", json_string("error"));
        return ev;
    }
    return NULL;
}

void exec_out_set_reply(exec_out_t *self, const json_t *reply_content) {
    json_t *ec = json_object_get(reply_content, "execution_count");
    if (json_is_integer(ec)) {
        json_decref(self->execution_count);
        self->execution_count = json_incref(ec);
    }
    /* The reply's status is the verdict; iopub's `error` message normally says the same
     * first, with the traceback. An aborted request (a kernel stops on another client's
     * error, e.g. a notebook's cell in the same session) never ran: that is not a success
     * with no output. */
    const char *status = json_string_value(json_object_get(reply_content, "status"));
    if (self->error || !status)
        return;
    if (streq(status, "aborted")) {
        exec_out_set_error(self, "ExecutionAborted",
                           "the kernel did not run this code: it aborted the request");
    } else if (streq(status, "error")) {
        self->error = error_object(reply_content); /* iopub's, if it comes, replaces it */
    }
}

void exec_out_set_error(exec_out_t *self, const char *ename, const char *evalue) {
    if (self->error)
        return;
    self->error = json_pack("{s:s,s:s,s:[]}", "ename", ename, "evalue", evalue, "traceback");
}

bool exec_out_has_error(const exec_out_t *self) {
    return self->error != NULL;
}

json_t *exec_out_note_lost(exec_out_t *self, const char *why) {
    char text[320];
    snprintf(text, sizeof text, "\n[output lost: %s]\n", why);
    json_t *content = json_pack("{s:s,s:s}", "name", "stderr", "text", text);
    json_t *ev = content ? exec_out_feed(self, "stream", content) : NULL;
    json_decref(content);
    self->truncated = true;
    return ev;
}

bool exec_out_truncated(const exec_out_t *self) {
    return self->truncated;
}

/* A growable string for the summary's text fields. */
struct sbuf {
    char *p;
    size_t len, cap;
};

static void sbuf_add(struct sbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np)
            return;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

json_t *exec_out_summary(const exec_out_t *self, bool with_outputs) {
    struct sbuf all = {0}, out = {0}, err = {0};
    sbuf_add(&all, "", 0);
    sbuf_add(&out, "", 0);
    sbuf_add(&err, "", 0);
    size_t i;
    json_t *o;
    json_array_foreach(self->outputs, i, o) {
        const char *type = json_string_value(json_object_get(o, "type"));
        if (streq(type, "stream")) {
            json_t *t = json_object_get(o, "text");
            const char *name = json_string_value(json_object_get(o, "name"));
            sbuf_add(streq(name, "stderr") ? &err : &out, json_string_value(t),
                     json_string_length(t));
            sbuf_add(&all, json_string_value(t), json_string_length(t));
            continue;
        }
        json_t *data = json_object_get(o, "data");
        json_t *plain = json_object_get(data, "text/plain");
        /* A figure's text/plain is a placeholder ("<Figure ...>"): keep result_text to the
         * text a person would read. Results always count. */
        bool has_image = json_object_get(data, "image/png") || json_object_get(data, "image/jpeg");
        if (json_is_string(plain) && (streq(type, "result") || !has_image)) {
            sbuf_add(&all, json_string_value(plain), json_string_length(plain));
            if (all.len && all.p[all.len - 1] != '\n')
                sbuf_add(&all, "\n", 1);
        }
    }
    if (self->error) {
        json_t *line;
        json_array_foreach(json_object_get(self->error, "traceback"), i, line) {
            sbuf_add(&all, json_string_value(line), json_string_length(line));
            sbuf_add(&all, "\n", 1);
        }
        if (json_array_size(json_object_get(self->error, "traceback")) == 0) {
            const char *en = json_string_value(json_object_get(self->error, "ename"));
            const char *ev = json_string_value(json_object_get(self->error, "evalue"));
            sbuf_add(&all, en, strlen(en));
            sbuf_add(&all, ": ", 2);
            sbuf_add(&all, ev, strlen(ev));
            sbuf_add(&all, "\n", 1);
        }
    }
    json_t *res =
        json_pack("{s:s%,s:s%,s:s%,s:O,s:O,s:b}", "result_text", all.p ? all.p : "", all.len,
                  "stdout", out.p ? out.p : "", out.len, "stderr", err.p ? err.p : "", err.len,
                  "error", self->error ? self->error : json_null(), "execution_count",
                  self->execution_count, "truncated", self->truncated);
    free(all.p);
    free(out.p);
    free(err.p);
    if (!res)
        return NULL;
    json_object_set_new(res, "result_base64",
                        self->last_png ? json_incref(self->last_png) : json_null());
    if (with_outputs)
        json_object_set(res, "outputs", self->outputs);
    return res;
}
