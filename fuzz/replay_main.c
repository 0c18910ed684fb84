/* Standalone driver for fuzz/fuzz_api.c without libFuzzer: runs every file named on the command line (or found
 * in a named folder) through the harness once. Used to replay the corpus in a build without sanitizers (warming
 * PoCL's kernel cache before the ASan run, where kernel builds are several times slower) and under valgrind. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *fh = fopen(path, "rb");
    if (!fh) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return 1;
    }
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 4096;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) {
                fprintf(stderr, "replay: out of memory\n");
                free(buf);
                fclose(fh);
                return 1;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, fh);
        n += got;
        if (got == 0)
            break;
    }
    fclose(fh);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv)
{
    LLVMFuzzerInitialize(&argc, &argv);
    int failed = 0, count = 0;
    for (int a = 1; a < argc; a++) {
        struct stat st;
        if (stat(argv[a], &st) != 0) {
            fprintf(stderr, "replay: no such file or folder: %s\n", argv[a]);
            failed = 1;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            failed |= run_file(argv[a]);
            count++;
            continue;
        }
        DIR *d = opendir(argv[a]);
        if (!d) {
            fprintf(stderr, "replay: cannot open folder %s\n", argv[a]);
            failed = 1;
            continue;
        }
        char **names = NULL;
        size_t nn = 0;
        for (struct dirent *e; (e = readdir(d)) != NULL;) {
            if (e->d_name[0] == '.')
                continue;
            char **nm = realloc(names, (nn + 1) * sizeof *names);
            size_t len = strlen(argv[a]) + strlen(e->d_name) + 2;
            char *p = malloc(len);
            if (!nm || !p) {
                fprintf(stderr, "replay: out of memory\n");
                return 1;
            }
            names = nm;
            snprintf(p, len, "%s/%s", argv[a], e->d_name);
            names[nn++] = p;
        }
        closedir(d);
        qsort(names, nn, sizeof *names, cmp_str); /* a stable order: reproducible runs */
        for (size_t k = 0; k < nn; k++) {
            failed |= run_file(names[k]);
            count++;
            free(names[k]);
        }
        free(names);
    }
    fprintf(stderr, "replay: %d inputs run%s\n", count, failed ? " (some could not be read)" : "");
    return failed;
}
