/*
 * textfile.h - reads a whole (small) text file into memory: the API key
 * file, a --chat-template file. The caller owns and frees the result.
 */
#ifndef ES_TEXTFILE_H
#define ES_TEXTFILE_H

/* The file's contents, NUL-terminated, or NULL when it cannot be opened. */
char *textfile_read(const char *path);

#endif
