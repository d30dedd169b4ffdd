# comfyui-gateway container: build stage compiles TypeScript, runtime stage has production dependencies only.
# Build: docker build -t comfyui-gateway .   Run: see docker-compose.yml and docs/deploy.md.

FROM node:20-bookworm-slim AS build
WORKDIR /app
# bcrypt is a native module: the build stage has the toolchain in case no prebuilt binary matches
RUN apt-get update && apt-get install -y --no-install-recommends python3 make g++ && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
COPY scripts ./scripts
COPY tsconfig.json tsconfig.build.json ./
COPY gateway ./gateway
# `npm ci` runs `prepare`, which builds dist/ once
RUN npm ci --no-audit --no-fund && npm prune --omit=dev

FROM node:20-bookworm-slim AS runtime
ENV NODE_ENV=production
# glibc keeps freed heap instead of trimming it after every burst of body buffers (gateway/heapTuning.ts MALLOC_ENV)
ENV MALLOC_TRIM_THRESHOLD_=134217728 MALLOC_TOP_PAD_=67108864 MALLOC_MMAP_THRESHOLD_=33554432
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/gateway ./dist/gateway
COPY package.json ./
COPY scripts ./scripts
COPY public ./public
# The container's config: listen on all interfaces inside the container, ComfyUI on the internal network,
# state in the /data volume. Mount your own file over /app/config.json to change anything.
COPY docker/config.json ./config.json
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 8189
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:8189/health').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "dist/gateway/bin.js"]
CMD ["--config", "/app/config.json"]
