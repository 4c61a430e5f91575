/* The options: a handful of HAKMEM_* environment variables, read once at
 * start-up straight from environ (no getenv copies, no allocation).
 * docs/OPTIONS.md describes each one.
 * SPDX-License-Identifier: MIT */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;

Options options = {
    .stats = 0, .verbose = 0, .invalid_free = 0, .decay_ms = 250, .cache_max_mb = 1024,
};

typedef struct OptionDesc {
    const char *name;
    long       *value;
    long        min, max;
    const char *words[2]; /* for options that take a word: the word of 0, of 1 */
    const char *help;
} OptionDesc;

static const OptionDesc option_table[] = {
    { "HAKMEM_STATS", &options.stats, 0, 1, { NULL, NULL },
      "print the statistics report to stderr at exit" },
    { "HAKMEM_VERBOSE", &options.verbose, 0, 1, { NULL, NULL },
      "print the options in effect at start-up" },
    { "HAKMEM_INVALID_FREE", &options.invalid_free, 0, 1, { "abort", "ignore" },
      "what an invalid or double free does: abort (default) or ignore (and count)" },
    { "HAKMEM_DECAY_MS", &options.decay_ms, 0, 3600000, { NULL, NULL },
      "free memory unused this long (ms) is returned to the OS" },
    { "HAKMEM_CACHE_MAX_MB", &options.cache_max_mb, 0, 1 << 20, { NULL, NULL },
      "cap on free memory kept resident for reuse (MiB)" },
};
#define NOPTIONS (sizeof option_table / sizeof option_table[0])

static void warn(const char *what, const char *entry)
{
    char buf[256];
    snprintf(buf, sizeof buf, "hakmem: %s: %.200s\n", what, entry);
    write_stderr(buf);
}

static bool parse_value(const OptionDesc *o, const char *v)
{
    for (long w = 0; w < 2; w++)
        if (o->words[w] && strcmp(v, o->words[w]) == 0) {
            *o->value = w;
            return true;
        }
    char *end;
    long n = strtol(v, &end, 10);
    if (end == v || *end || n < o->min || n > o->max)
        return false;
    *o->value = n;
    return true;
}

void options_init(void)
{
    if (!environ)
        return;
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "HAKMEM_", 7) != 0)
            continue;
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        size_t len = (size_t)(eq - *e);
        const OptionDesc *o = NULL;
        for (size_t i = 0; i < NOPTIONS; i++)
            if (strlen(option_table[i].name) == len && strncmp(*e, option_table[i].name, len) == 0)
                o = &option_table[i];
        if (!o)
            warn("unknown option ignored", *e);
        else if (!parse_value(o, eq + 1))
            warn("invalid value ignored", *e);
    }
}

void options_print(void)
{
    char buf[256];
    for (size_t i = 0; i < NOPTIONS; i++) {
        const OptionDesc *o = &option_table[i];
        long v = *o->value;
        if (o->words[0])
            snprintf(buf, sizeof buf, "hakmem: %s=%s  (%s)\n", o->name, o->words[v], o->help);
        else
            snprintf(buf, sizeof buf, "hakmem: %s=%ld  (%s)\n", o->name, v, o->help);
        write_stderr(buf);
    }
}
