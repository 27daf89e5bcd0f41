// The browser's own storage (IndexedDB), one database per signed-in user:
// the Olm account and sessions (pickled, encrypted with a key kept beside
// them), and the chats, decrypted. Nothing here goes to the adapter.

export interface Store {
  get<T>(store: "kv" | "messages", key: string): Promise<T | undefined>;
  put(store: "kv" | "messages", key: string, value: unknown): Promise<void>;
  all<T>(store: "kv" | "messages"): Promise<T[]>;
}

function req<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

export async function openStore(user: string): Promise<Store> {
  const open = indexedDB.open(`home-messenger:${user}`, 1);
  open.onupgradeneeded = () => {
    open.result.createObjectStore("kv");
    open.result.createObjectStore("messages");
  };
  const db = await req(open);
  const tx = (store: string, mode: IDBTransactionMode) =>
    db.transaction(store, mode).objectStore(store);
  return {
    get: <T>(store: string, key: string) => req(tx(store, "readonly").get(key)) as Promise<T | undefined>,
    put: async (store: string, key: string, value: unknown) => {
      await req(tx(store, "readwrite").put(value, key));
    },
    all: <T>(store: string) => req(tx(store, "readonly").getAll()) as Promise<T[]>,
  } as Store;
}
