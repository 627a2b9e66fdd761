/** A node of an intrusive doubly linked list: O(1) push, head removal and removal from the middle. */
export interface Link<T> {
  value: T;
  prev: Link<T> | null;
  next: Link<T> | null;
}

export class LinkedFifo<T> {
  private head: Link<T> | null = null;
  private tail: Link<T> | null = null;
  size = 0;

  push(value: T): Link<T> {
    const link: Link<T> = { value, prev: this.tail, next: null };
    if (this.tail) this.tail.next = link;
    else this.head = link;
    this.tail = link;
    this.size++;
    return link;
  }

  peek(): T | undefined {
    return this.head?.value;
  }

  /** The link must be in this list. */
  remove(link: Link<T>): void {
    if (link.prev) link.prev.next = link.next;
    else this.head = link.next;
    if (link.next) link.next.prev = link.prev;
    else this.tail = link.prev;
    link.prev = null;
    link.next = null;
    this.size--;
  }

  *[Symbol.iterator](): Iterator<T> {
    for (let link = this.head; link; link = link.next) yield link.value;
  }
}
