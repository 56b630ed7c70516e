/*
 * textfile.c - reads a whole text file into a heap string (see
 * textfile.h). Owns nothing after returning; never logs.
 */
#include "textfile.h"

#include <stdio.h>

#include "strbuf.h"

char *textfile_read(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    struct strbuf sb = {0};
    char buf[8192];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
        sb_append(&sb, buf, n);
    fclose(f);
    return sb_steal(&sb);
}
